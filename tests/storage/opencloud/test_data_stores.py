"""Data stores themselves (list, delete, undelete, snapshot) through rblx-open-cloud 2.3.0 (unmodified), what a
deleted store's entries answer, and the reference shapes the client does not send, as raw HTTP."""

from __future__ import annotations

import datetime as dt

import pytest
import rblxopencloud
from rblxopencloud import Forbidden, HttpException, NotFound
from rblxopencloud.datastore import DataStoreState

from lodestore.storage import World
from tests.storage.opencloud.conftest import START_MS, serve

V2 = "cloud/v2/universes/1/data-stores"
V1_ENTRY = "datastores/v1/universes/1/standard-datastores/datastore/entries/entry"
DAY_S = 24 * 3600


def at(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)


def fill(served, *names: str) -> None:
    """A game server writes one key in each store (a store is listed once it holds something)."""
    game = served.world.server("game").datastores
    for name in names:
        game.get_data_store(name).set("k", name)


def test_list_data_stores_with_a_prefix_and_every_page(experience, served):
    names = [f"players{i:02d}" for i in range(12)] + ["settings"]
    fill(served, *names)
    listed = list(experience.list_datastores())
    assert [s.name for s in listed] == names
    assert {s.state for s in listed} == {DataStoreState.Active}
    assert listed[0].created_at == at(START_MS)
    assert [s.name for s in experience.list_datastores(prefix="players1")] == ["players10", "players11"]
    assert [s.name for s in experience.list_datastores(limit=3)] == names[:3]
    # raw: Roblox's default page is 10, pageToken goes on
    first = served.request("GET", V2).json()
    assert len(first["dataStores"]) == 10 and first["nextPageToken"]
    rest = served.request("GET", V2, params={"pageToken": first["nextPageToken"]}).json()
    assert [s["id"] for s in first["dataStores"] + rest["dataStores"]] == names and rest["nextPageToken"] == ""
    assert first["dataStores"][0] == {"path": "universes/1/data-stores/players00", "id": "players00",
                                      "createTime": "2026-05-28T20:26:40.000Z", "state": "ACTIVE"}
    assert served.request("GET", V2, params={"filter": "id.endsWith(\"x\")"}).status_code == 400
    assert served.request("GET", V2, params={"pageToken": "not-a-token"}).status_code == 400


def test_v1_lists_data_stores_in_its_shape_with_a_prefix_and_pages(served):
    fill(served, "players", "players-v2", "settings")
    url = "datastores/v1/universes/1/standard-datastores"
    first = served.request("GET", url, params={"prefix": "players", "limit": 1})
    assert first.status_code == 200 and "x-ratelimit-limit" in first.headers   # v1's list limit applies
    assert first.json()["datastores"] == [{"name": "players", "createdTime": "2026-05-28T20:26:40.000Z"}]
    rest = served.request("GET", url, params={"prefix": "players", "cursor": first.json()["nextPageCursor"]}).json()
    assert [s["name"] for s in rest["datastores"]] == ["players-v2"] and rest["nextPageCursor"] == ""
    assert [s["name"] for s in served.request("GET", url).json()["datastores"]] == ["players", "players-v2",
                                                                                     "settings"]
    bad = served.request("GET", url, params={"cursor": "nope"})
    assert bad.status_code == 400 and bad.json()["errorDetails"][0]["errorDetailType"] == "DatastoreErrorInfo"


def test_delete_makes_the_entries_unreachable_and_undelete_brings_them_back(experience, served, clock):
    store = experience.get_datastore("players")
    store.set_entry("user_1", {"coins": 5})
    fill(served, "other")
    clock.advance(60)
    store.delete()
    deleted = [s for s in experience.list_datastores(show_deleted=True) if s.name == "players"]
    assert deleted[0].state is DataStoreState.Deleted
    assert deleted[0].expires_at == at(START_MS + 60_000 + 30 * DAY_S * 1000)
    assert [s.name for s in experience.list_datastores()] == ["other"]
    with pytest.raises(NotFound):
        store.get_entry("user_1")
    with pytest.raises(NotFound):
        store.set_entry("user_1", {"coins": 6})
    v2 = served.request("GET", f"{V2}/players/entries/user_1")
    assert v2.status_code == 404 and v2.json()["code"] == "NOT_FOUND" and "DatastoreDeleted" in v2.json()["message"]
    v1 = served.request("GET", V1_ENTRY, params={"datastoreName": "players", "entryKey": "user_1"})
    assert v1.status_code == 404 and v1.json()["errorDetails"][0]["datastoreErrorCode"] == "DatastoreNotFound"
    assert "DatastoreDeleted" in v1.json()["message"]
    store.undelete()
    assert store.get_entry("user_1")[0] == {"coins": 5}
    assert {s.name: s.state for s in experience.list_datastores()} == {"other": DataStoreState.Active,
                                                                      "players": DataStoreState.Active}


def test_delete_and_undelete_answer_the_data_store_and_refuse_what_cannot_be(served, clock):
    fill(served, "players")
    deleted = served.request("DELETE", f"{V2}/players")
    assert deleted.status_code == 200
    assert deleted.json() == {"path": "universes/1/data-stores/players", "id": "players",
                              "createTime": "2026-05-28T20:26:40.000Z", "state": "DELETED",
                              "expireTime": "2026-06-27T20:26:40.000Z"}
    clock.advance(3600)
    assert served.request("DELETE", f"{V2}/players").json() == deleted.json()   # deleting again changes nothing
    restored = served.request("POST", f"{V2}/players:undelete")
    assert restored.status_code == 200 and restored.json()["state"] == "ACTIVE" and "expireTime" not in restored.json()
    not_deleted = served.request("POST", f"{V2}/players:undelete")
    assert not_deleted.status_code == 400 and not_deleted.json()["code"] == "INVALID_ARGUMENT"
    assert "DatastoreNotDeleted" in not_deleted.json()["message"]
    empty = served.request("DELETE", f"{V2}/nothing-here")
    assert empty.status_code == 404 and empty.json()["code"] == "NOT_FOUND"
    assert served.request("DELETE", f"{V2}/{'n' * 51}").status_code == 400


def test_the_client_sees_an_empty_store_refused(experience):
    with pytest.raises(NotFound):
        experience.get_datastore("never-written").delete()
    experience.get_datastore("players").set_entry("k", 1)
    with pytest.raises(HttpException) as refused:
        experience.get_datastore("players").undelete()
    assert refused.value.status_code == 400


def test_snapshot_once_per_utc_day_keeps_the_version_the_next_write_replaces(experience, served, clock):
    store = experience.get_datastore("players")
    first = store.set_entry("user_1", {"coins": 1}).version
    clock.advance(60)
    taken, when = experience.snapshot_datastores()
    assert taken and when == at(START_MS + 60_000)
    clock.advance(60)
    assert experience.snapshot_datastores() == (False, at(START_MS + 60_000))
    store.set_entry("user_1", {"coins": 2})   # within the same hour: kept only because of the snapshot
    assert [v.version for v in store.list_versions("user_1")][0] == first
    assert store.get_version("user_1", first)[0] == {"coins": 1}
    clock.advance(DAY_S)
    assert experience.snapshot_datastores()[0] is True
    assert served.request("POST", f"{V2}:snapshot", json={"force": True}).status_code == 400


def test_data_store_management_needs_its_permission(clock):
    for served in serve(World.in_process(clock=clock, budget=None),
                        api_keys=["admin", "editor:datastores.read,datastores.write"]):
        fill(served, "players")
        editor = rblxopencloud.Experience(1, "editor")
        with pytest.raises(Forbidden):
            list(editor.list_datastores())
        with pytest.raises(Forbidden):
            editor.get_datastore("players").delete()
        with pytest.raises(Forbidden):
            editor.snapshot_datastores()
        v1 = served.request("GET", "datastores/v1/universes/1/standard-datastores", key="editor")
        assert v1.status_code == 403 and v1.json()["errorDetails"][0]["datastoreErrorCode"] == "InsufficientScope"
        refused = served.request("POST", f"{V2}/players:undelete", key="editor")
        assert refused.status_code == 403 and refused.json()["code"] == "PERMISSION_DENIED"
        assert editor.get_datastore("players").get_entry("k")[0] == "players"   # nothing was deleted
        assert [s.name for s in rblxopencloud.Experience(1, "admin").list_datastores()] == ["players"]

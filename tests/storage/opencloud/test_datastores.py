"""Data Stores v1 and v2 through the real rblx-open-cloud 2.3.0 client (unmodified), plus the v2 shapes it does not
send, as raw HTTP."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from rblxopencloud import NotFound, PreconditionFailed

from tests.storage.opencloud.conftest import START_MS

V2 = "cloud/v2/universes/1/data-stores"


def test_set_then_get_round_trips_value_users_and_attributes(experience, served):
    store = experience.get_datastore("players")
    version = store.set_entry("user_1", {"coins": 10, "name": "ann"}, users=[1, 2], metadata={"team": "red"})
    value, info = store.get_entry("user_1")
    assert value == {"coins": 10, "name": "ann"}
    assert (info.version, info.users, info.metadata) == (version.version, [1, 2], {"team": "red"})
    assert info.created == dt.datetime.fromtimestamp(START_MS / 1000, dt.timezone.utc)
    # a game server sees the same entry
    seen, key_info = served.world.server("job").datastores.get_data_store("players").get("user_1")
    assert seen == {"coins": 10, "name": "ann"} and key_info.user_ids == (1, 2)


def test_match_version_refuses_a_stale_version_with_412_and_the_current_entry(experience):
    store = experience.get_datastore("players")
    first = store.set_entry("user_1", {"coins": 1}).version
    second = store.set_entry("user_1", {"coins": 2}, previous_version=first).version
    assert second != first
    with pytest.raises(PreconditionFailed) as refused:
        store.set_entry("user_1", {"coins": 3}, previous_version=first)
    assert refused.value.value == {"coins": 2} and refused.value.info.version == second
    assert store.get_entry("user_1")[0] == {"coins": 2}


def test_exclusive_create_writes_once_and_refuses_an_existing_key(experience):
    store = experience.get_datastore("players")
    # the client's own quirk: it creates through v2 first, then its v1 exclusive create finds the value there
    with pytest.raises(PreconditionFailed):
        store.set_entry("new", {"v": 1}, exclusive_create=True)
    assert store.get_entry("new")[0] == {"v": 1}
    with pytest.raises(PreconditionFailed) as refused:
        store.set_entry("new", {"v": 2}, exclusive_create=True)
    assert refused.value.value == {"v": 1}
    assert store.get_entry("new")[0] == {"v": 1}


def test_increment_adds_and_sets_users(experience):
    store = experience.get_datastore("counters")
    assert store.increment_entry("visits", 5)[0] == 5
    value, info = store.increment_entry("visits", -2, users=[7])
    assert value == 3 and info.users == [7]
    assert store.get_entry("visits")[0] == 3


def test_remove_then_get_is_not_found(experience):
    store = experience.get_datastore("players")
    store.set_entry("gone", 1)
    store.remove_entry("gone")
    with pytest.raises(NotFound):
        store.get_entry("gone")


def test_list_keys_pages_through_every_key_in_a_scope_and_across_scopes(experience, served):
    store = experience.get_datastore("players")
    keys = [f"k{i:03d}" for i in range(300)]   # more than one page of 256, written by a game server
    game = served.world.server("game").datastores.get_data_store("players")
    for k in keys:
        game.set(k, 1)
    experience.get_datastore("players", scope="other").set_entry("elsewhere", 1)
    assert [e.key for e in store.list_keys()] == keys
    assert [e.key for e in store.list_keys(prefix="k29")] == [f"k29{i}" for i in range(10)]
    everywhere = experience.get_datastore("players", scope=None)
    assert {(e.scope, e.key) for e in everywhere.list_keys()} == {("global", k) for k in keys} | {("other",
                                                                                                  "elsewhere")}


def test_versions_list_and_get(experience, clock):
    store = experience.get_datastore("players")
    versions = []
    for coins in range(3):
        versions.append(store.set_entry("user_1", {"coins": coins}).version)
        clock.advance(3600)   # an hour apart: each write keeps its version
    listed = [v.version for v in store.list_versions("user_1")]
    assert listed == versions
    assert store.get_version("user_1", versions[0])[0] == {"coins": 0}
    with pytest.raises(NotFound):
        store.get_version("user_1", "no-such-version")
    at = dt.datetime.fromtimestamp((START_MS + 3600_000 + 1000) / 1000, dt.timezone.utc)
    assert store.get_version("user_1", at)[0] == {"coins": 1}
    after = dt.datetime.fromtimestamp((START_MS + 3600_000) / 1000, dt.timezone.utc)
    assert [v.version for v in store.list_versions("user_1", after=after)] == versions[1:]


def test_v2_entries_create_get_patch_delete_without_the_client(served):
    base = f"{V2}/players/scopes/global/entries"
    made = served.request("POST", f"{base}?id=u1", json={"value": {"a": 1}, "users": ["users/5"],
                                                          "attributes": {"x": 1}})
    assert made.status_code == 200 and made.json()["value"] == {"a": 1} and made.json()["users"] == ["users/5"]
    again = served.request("POST", f"{base}?id=u1", json={"value": {"a": 2}})
    assert again.status_code == 400 and again.json()["code"] == "INVALID_ARGUMENT"
    missing = served.request("PATCH", f"{base}/nobody?allowMissing=false", json={"value": 1})
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
    patched = served.request("PATCH", f"{base}/u1?allowMissing=false", json={"value": {"a": 3}})
    assert patched.status_code == 200 and patched.json()["users"] == [] and patched.json()["attributes"] == {}
    # without the scopes segment: the default scope
    assert served.request("GET", f"{V2}/players/entries/u1").json()["value"] == {"a": 3}
    bumped = served.request("POST", f"{base}/n:increment", json={"amount": 4})
    assert bumped.status_code == 200 and bumped.json()["value"] == 4
    assert served.request("DELETE", f"{base}/u1").status_code == 200
    assert served.request("DELETE", f"{base}/u1").status_code == 404
    assert served.request("GET", f"{base}/u1@latest").status_code == 404


def test_v2_latest_at_a_time_at_most_ten_minutes_ahead(served, clock):
    base = f"{V2}/players/scopes/global/entries"
    served.request("PATCH", f"{base}/u1?allowMissing=true", json={"value": 1})
    soon = dt.datetime.fromtimestamp((START_MS + 9 * 60_000) / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    late = dt.datetime.fromtimestamp((START_MS + 11 * 60_000) / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert served.request("GET", f"{base}/u1@latest:{soon}").json()["value"] == 1
    too_late = served.request("GET", f"{base}/u1@latest:{late}")
    assert too_late.status_code == 400 and too_late.json()["code"] == "INVALID_ARGUMENT"


def test_v2_list_revisions_pages(served, clock):
    base = f"{V2}/players/scopes/global/entries"
    for i in range(5):
        served.request("PATCH", f"{base}/u1?allowMissing=true", json={"value": i})
        clock.advance(3600)
    first = served.request("GET", f"{base}/u1:listRevisions?maxPageSize=3").json()
    rest = served.request("GET", f"{base}/u1:listRevisions?maxPageSize=3&pageToken={first['nextPageToken']}").json()
    revisions = [r["revisionId"] for r in first["dataStoreEntries"] + rest["dataStoreEntries"]]
    assert len(revisions) == 5 == len(set(revisions)) and rest["nextPageToken"] == ""


def test_a_plain_set_is_one_write_request_and_a_get_is_never_cached(experience, served):
    store = experience.get_datastore("players")
    store.set_entry("u", 1)                     # the client's set is v1's: outside the experience budget
    served.request("PATCH", f"{V2}/players/entries/u?allowMissing=true", json={"value": 2})
    oc = served.app.state.opencloud
    assert oc.v1.datastores.statistics().requests == {"StandardWrite": 1}
    assert oc.server.datastores.statistics().requests == {"StandardWrite": 1}
    served.world.server("game").datastores.get_data_store("players").set("u", 3)
    assert store.get_entry("u")[0] == 3   # Open Cloud reads what a game server wrote a moment ago


V1 = "datastores/v1/universes/1/standard-datastores/datastore/entries"


def test_v1_reference_shapes_the_client_does_not_send(served, clock):
    entry = {"datastoreName": "players", "scope": "global", "entryKey": "u1"}
    body = b'{"coins":1}'
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    written = served.request("POST", f"{V1}/entry", params=entry, data=body,
                             headers={"content-md5": md5, "roblox-entry-userids": "5,6",
                                      "roblox-entry-attributes": '{"a": 1}'})
    assert written.status_code == 200
    got = served.request("GET", f"{V1}/entry", params=entry)
    assert got.json() == {"coins": 1} and got.headers["content-md5"] == md5
    assert json.loads(got.headers["roblox-entry-userids"]) == [5, 6]
    assert json.loads(got.headers["roblox-entry-attributes"]) == {"a": 1}
    assert got.headers["roblox-entry-version"] == written.json()["version"]
    missing = served.request("GET", f"{V1}/entry", params={**entry, "entryKey": "nobody"})
    assert missing.status_code == 404
    assert missing.json()["errorDetails"] == [{"errorDetailType": "DatastoreErrorInfo",
                                               "datastoreErrorCode": "EntryNotFound"}]
    clock.advance(3600)
    served.request("POST", f"{V1}/entry", params=entry, data=b'{"coins":2}')
    served.request("POST", f"{V1}/entry", params={**entry, "scope": "s2", "entryKey": "u2"}, data=b"1")
    versions = served.request("GET", f"{V1}/entry/versions", params={**entry, "sortOrder": "Descending"}).json()
    assert [v["version"] for v in versions["versions"]][1] == written.json()["version"]
    old = served.request("GET", f"{V1}/entry/versions/version",
                         params={**entry, "versionId": written.json()["version"]})
    assert old.json() == {"coins": 1}
    listed = served.request("GET", V1, params={"datastoreName": "players", "allScopes": "true", "limit": 1}).json()
    rest = served.request("GET", V1, params={"datastoreName": "players", "allScopes": "true",
                                             "cursor": listed["nextPageCursor"]}).json()
    assert listed["keys"] + rest["keys"] == [{"scope": "global", "key": "u1"}, {"scope": "s2", "key": "u2"}]
    assert rest["nextPageCursor"] == ""


def test_concurrent_increments_through_http_lose_nothing(served):
    url = f"{V2}/counters/scopes/global/entries/hits:increment"

    def bump(_: int) -> int:
        return served.request("POST", url, json={"amount": 1}).status_code

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(bump, range(64))) == {200}
    assert served.world.server("g").datastores.get_data_store("counters").get("hits")[0] == 64


def test_a_data_store_whose_name_holds_a_slash_is_reached_with_it_encoded(served):
    """A name such as lodestore's own "lodestore/records/players" is one path segment, its "/" sent as %2F (as
    encodeURIComponent does); the server decodes it before routing, and must still see one segment."""
    served.world.server("game").datastores.get_data_store("guild/members").set("g1", {"rank": 2})
    for encoded in ("guild%2Fmembers", "guild%2fmembers"):
        got = served.request("GET", f"{V2}/{encoded}/entries/g1")
        assert got.status_code == 200 and got.json()["value"] == {"rank": 2}, got.text
    patched = served.request("PATCH", f"{V2}/guild%2Fmembers/scopes/global/entries/g1", json={"value": {"rank": 3}})
    assert patched.status_code == 200, patched.text
    listed = served.request("GET", f"{V2}/guild%2Fmembers/entries").json()["dataStoreEntries"]
    assert [e["id"] for e in listed] == ["g1"]
    assert served.world.server("game").datastores.get_data_store("guild/members").get("g1")[0] == {"rank": 3}
    # an entry key may hold an encoded slash too, and stays one key
    served.world.server("game").datastores.get_data_store("guild/members").set("a/b", 1)
    assert served.request("GET", f"{V2}/guild%2Fmembers/entries/a%2Fb").json()["value"] == 1
    assert served.request("GET", f"{V2}/guild%2Fmembers/entries/a/b").status_code == 404


def test_rblx_open_cloud_reaches_a_data_store_whose_name_holds_a_slash(experience, served):
    """The client quotes a name keeping its slashes (".../data-stores/guild/members/..."): the store is found all
    the same, and the paths it is answered with carry the name as one segment (%2F), which the client splits."""
    guild = experience.get_datastore("guild/members")
    guild.set_entry("g1", {"rank": 1})
    guild.increment_entry("count", 3)
    assert guild.get_entry("g1")[0] == {"rank": 1}
    assert sorted((k.key, k.scope) for k in guild.list_keys()) == [("count", "global"), ("g1", "global")]
    assert served.world.server("game").datastores.get_data_store("guild/members").get("count")[0] == 3
    listed = served.request("GET", f"{V2}").json()["dataStores"]
    assert {"id": "guild/members", "path": "universes/1/data-stores/guild%2Fmembers"}.items() <= \
        next(d for d in listed if d["id"] == "guild/members").items()

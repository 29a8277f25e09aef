"""Ordered data stores and MemoryStore sorted maps and queues through rblx-open-cloud 2.3.0 (unmodified), and the
Roblox-reference shapes it does not send, as raw HTTP."""

from __future__ import annotations

import pytest
import rblxopencloud
from rblxopencloud import Forbidden, NotFound, PreconditionFailed

from lodestore.storage import World
from tests.storage.opencloud.conftest import serve

MS = "cloud/v2/universes/1/memory-store"


def test_ordered_set_get_increment_remove(experience):
    board = experience.get_ordered_datastore("wins")
    assert board.set_entry("ann", 5) == 5
    assert board.get_entry("ann") == 5
    assert board.increment_entry("ann", 3) == 8
    with pytest.raises(PreconditionFailed):
        board.set_entry("ann", 1, exclusive_create=True)
    assert board.get_entry("ann") == 8
    with pytest.raises(NotFound):   # exclusive update of a missing key (the client's PreconditionFailed is dead code)
        board.set_entry("bob", 1, exclusive_update=True)
    assert board.set_entry("cat", 2, exclusive_create=True) == 2
    board.remove_entry("ann")
    with pytest.raises(NotFound):
        board.get_entry("ann")


def test_ordered_sort_keys_in_value_order_with_bounds_and_pages(experience, served):
    game = served.world.server("game").datastores.get_ordered_data_store("wins")
    scores = {f"p{i:03d}": (i * 37) % 250 for i in range(250)}   # more than one page of 100
    for key, value in scores.items():
        game.set(key, value)
    board = experience.get_ordered_datastore("wins")
    desc = [(e.key, e.value) for e in board.sort_keys()]
    assert desc == sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
    asc = [e.value for e in board.sort_keys(descending=False, limit=5)]
    assert asc == sorted(scores.values())[:5]
    bounded = [e.value for e in board.sort_keys(descending=False, min=10, max=20)]
    assert bounded == sorted(v for v in scores.values() if 10 <= v <= 20)


def test_ordered_v2_paths_and_missing_delete(served):
    base = "cloud/v2/universes/1/ordered-data-stores/wins/scopes/global/entries"
    assert served.request("POST", f"{base}?id=ann", json={"value": 4}).json()["value"] == 4
    assert served.request("POST", f"{base}/ann:increment", json={"amount": 2}).json()["value"] == 6
    listed = served.request("GET", f"{base}?orderBy=value%20desc&maxPageSize=10").json()
    assert [e["id"] for e in listed["entries"]] == ["ann"]
    assert served.request("DELETE", f"{base}/ann").status_code == 200
    missing = served.request("DELETE", f"{base}/ann")
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
    v1_missing = served.request("GET", "ordered-data-stores/v1/universes/1/orderedDataStores/wins/scopes/global/"
                                       "entries/ann")
    assert v1_missing.status_code == 404 and set(v1_missing.json()) == {"code", "message"}


def test_sorted_map_set_get_list_order_and_filters(experience):
    ranks = experience.get_sorted_map("ranks")
    for i, name in enumerate(["d", "a", "c", "b", "e"]):
        ranks.set_key(name, {"n": i}, 600, sort_key=10 * (i + 1))
    entry = ranks.get_key("a")
    assert (entry.value, entry.sort_key) == ({"n": 1}, 20)
    assert [e.key for e in ranks.list_keys()] == ["d", "a", "c", "b", "e"]          # by sort key
    assert [e.key for e in ranks.list_keys(descending=True, limit=2)] == ["e", "b"]
    between = ranks.list_keys(lower_bound_sort_key=15, upper_bound_sort_key=45)
    assert [e.sort_key for e in between] == [20, 30, 40]


def test_sorted_map_pages_past_one_page(experience, served):
    game = served.world.server("game").memorystores.get_sorted_map("big")
    for i in range(130):
        game.set(f"k{i:03d}", i, 600, sort_key=i)
    assert [e.key for e in experience.get_sorted_map("big").list_keys()] == [f"k{i:03d}" for i in range(130)]


def test_sorted_map_exclusive_create_and_update(experience):
    ranks = experience.get_sorted_map("ranks")
    ranks.set_key("a", 1, 600, exclusive_create=True)
    with pytest.raises(PreconditionFailed):
        ranks.set_key("a", 2, 600, exclusive_create=True)
    with pytest.raises(PreconditionFailed):
        ranks.set_key("missing", 2, 600, exclusive_update=True)
    assert ranks.set_key("a", 3, 600, exclusive_update=True).value == 3
    assert ranks.get_key("a").value == 3


def test_sorted_map_delete_with_etag(experience):
    ranks = experience.get_sorted_map("ranks")
    old = ranks.set_key("a", 1, 600)
    ranks.set_key("a", 2, 600)
    ranks.remove_key("a", etag=old.etag)          # stale etag: kept
    assert ranks.get_key("a").value == 2
    ranks.remove_key("a", etag=ranks.get_key("a").etag)
    with pytest.raises(NotFound):
        ranks.get_key("a")


def test_queue_read_hides_items_until_discarded_or_timed_out(experience, clock):
    queue = experience.get_memory_store_queue("jobs")
    for job in ("one", "two", "three"):
        queue.add_item(job, 600)
    values, read_id = queue.read_items(count=2, invisibility_seconds=30)
    assert values == ["one", "two"]
    assert queue.read_items(count=5)[0] == ["three"]        # the first two are invisible
    queue.remove_items(read_id)
    clock.advance(31)
    assert queue.read_items(count=5)[0] == ["three"]        # "three" came back, "one" and "two" are gone
    assert queue.read_items(count=5) == ([], None)


def test_queue_reference_shapes(served):
    base = f"{MS}/queues/jobs/items"
    added = served.request("POST", base, json={"data": {"job": 1}, "ttl": "60s", "priority": 2})
    assert added.status_code == 200 and added.json()["data"] == {"job": 1}
    read = served.request("GET", f"{base}:read?count=1&invisibilityWindow=10s").json()
    assert [i["data"] for i in read["items"]] == [{"job": 1}] and read["readId"]
    short = served.request("GET", f"{base}:read?count=1&allOrNothing=true")
    assert short.status_code == 404 and short.json()["code"] == "NOT_FOUND"
    assert served.request("POST", f"{base}:discard", json={"readId": read["readId"]}).status_code == 200
    assert served.world.server("game").memorystores.get_queue("jobs").get_size() == 0


def test_sorted_map_reference_create_conflict_shape(served):
    base = f"{MS}/sorted-maps/m/items"
    assert served.request("POST", f"{base}?id=x", json={"value": 1, "ttl": "30s"}).status_code == 200
    again = served.request("POST", f"{base}?id=x", json={"value": 2, "ttl": "30s"})
    assert again.status_code == 409 and again.json()["error"] == "ALREADY_EXISTS"
    bad_ttl = served.request("PATCH", f"{base}/x?allowMissing=true", json={"value": 2, "ttl": "soon"})
    assert bad_ttl.status_code == 400 and bad_ttl.json()["code"] == "INVALID_ARGUMENT"
    assert served.request("GET", f"{base}/x").json()["value"] == 1


def test_flush_empties_every_structure_and_its_operation_is_done(experience, served):
    experience.get_sorted_map("ranks").set_key("a", 1, 600, sort_key=1)
    experience.get_memory_store_queue("jobs").add_item("one", 600)
    served.world.server("game").memorystores.get_hash_map("sessions").set("u1", {"server": "g"}, 600)
    operation = experience.flush_memory_store()
    assert operation.wait(timeout_seconds=5) is True
    with pytest.raises(NotFound):
        experience.get_sorted_map("ranks").get_key("a")
    assert experience.get_memory_store_queue("jobs").read_items(count=5) == ([], None)
    assert served.world.server("game").memorystores.get_hash_map("sessions").get("u1") is None
    experience.get_sorted_map("ranks").set_key("a", 2, 600)   # usable again at once
    assert experience.get_sorted_map("ranks").get_key("a").value == 2


def test_flush_answers_a_done_operation_its_get_finds_again(served):
    served.world.server("game").memorystores.get_sorted_map("ranks").set("a", "x" * 10, 600)
    answer = served.request("POST", f"{MS}:flush")
    assert answer.status_code == 200
    operation = answer.json()
    assert operation["done"] is True and operation["path"].startswith("universes/1/memory-store/operations/")
    assert operation["metadata"]["structures"] == 1 and operation["metadata"]["items"] == 1
    again = served.request("GET", operation["path"].replace("universes/1/", "cloud/v2/universes/1/"))
    assert again.status_code == 200 and again.json() == operation
    unknown = served.request("GET", f"{MS}/operations/no-such-operation")
    assert unknown.status_code == 404 and unknown.json()["code"] == "NOT_FOUND"
    studio = served.request("POST", f"{MS}:flush", params={"scope": "STUDIO"})
    assert studio.status_code == 400 and studio.json()["code"] == "INVALID_ARGUMENT"


def test_flush_needs_its_permission_and_flushes_nothing_without(clock):
    for served in serve(World.in_process(clock=clock, budget=None),
                        api_keys=["writer:memorystore.read,memorystore.write"]):
        ranks = rblxopencloud.Experience(1, "writer").get_sorted_map("ranks")
        ranks.set_key("a", 1, 600)
        with pytest.raises(Forbidden):
            rblxopencloud.Experience(1, "writer").flush_memory_store()
        assert ranks.get_key("a").value == 1

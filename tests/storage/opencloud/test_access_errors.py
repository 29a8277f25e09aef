"""Keys, permissions, limits and error shapes of the served API: what a tool sees when it is refused."""

from __future__ import annotations

import pytest
import rblxopencloud
from rblxopencloud import Forbidden, RateLimited

from lodestore.storage import (DATASTORE_DELETED, ConfigError, DataStoreError, FaultConfig, MemoryStoreError,
                               MessagingServiceError, Outage, World)
from lodestore.storage.opencloud import DEFAULT_API_KEY, PERMISSIONS, create_app, parse_api_keys
from lodestore.storage.opencloud._access import V1Limits
from lodestore.storage.opencloud._errors import from_exception
from tests.storage.opencloud.conftest import START_MS, serve

V1 = "datastores/v1/universes/1/standard-datastores/datastore/entries/entry"
ENTRY = {"datastoreName": "players", "scope": "global", "entryKey": "user_1"}


@pytest.fixture
def keyed(clock):
    yield from serve(World.in_process(clock=clock, budget=None),
                     api_keys=["admin", "viewer:datastores.read,memorystore.read"])


def test_key_specs_parse_and_bad_ones_are_refused():
    keys = parse_api_keys(["admin", "viewer:datastores.read, memorystore.read"])
    assert keys["admin"].permissions == frozenset(PERMISSIONS)
    assert keys["viewer"].permissions == {"datastores.read", "memorystore.read"}
    assert set(parse_api_keys(None)) == {DEFAULT_API_KEY}
    for bad in (["k:datastores.destroy"], ["k:"], ["a", "a"], [""], ["two words"]):
        with pytest.raises(ConfigError):
            parse_api_keys(bad)
    with pytest.raises(ConfigError):
        create_app(World.in_process(budget=None), universe_id=0)


def test_no_key_or_an_unknown_key_is_401_in_the_gateway_shape(keyed):
    for key in (None, "wrong"):
        answer = keyed.request("GET", V1, key=key, params=ENTRY)
        assert answer.status_code == 401
        assert answer.json()["errors"][0]["code"] == 0


def test_a_key_without_write_permission_gets_403_and_writes_nothing(keyed):
    viewer = rblxopencloud.Experience(1, "viewer").get_datastore("players")
    with pytest.raises(Forbidden):
        viewer.set_entry("user_1", {"coins": 1})
    assert keyed.world.server("g").datastores.get_data_store("players").get("user_1") == (None, None)
    admin = rblxopencloud.Experience(1, "admin").get_datastore("players")
    admin.set_entry("user_1", {"coins": 1})
    assert viewer.get_entry("user_1")[0] == {"coins": 1}
    refused = keyed.request("POST", V1, key="viewer", params=ENTRY, json=2)
    body = refused.json()
    assert refused.status_code == 403 and body["errorDetails"][0]["errorDetailType"] == "DatastoreErrorInfo"


def test_another_universe_is_403(served):
    answer = served.request("GET", V1.replace("universes/1", "universes/2"), params=ENTRY)
    assert answer.status_code == 403


def test_unknown_paths_and_methods_are_gateway_errors(served):
    unknown = served.request("GET", "cloud/v2/universes/1/no-such-thing")
    assert unknown.status_code == 404 and unknown.json()["errors"][0]["code"] == 0
    wrong_method = served.request("PUT", V1, params=ENTRY)
    assert wrong_method.status_code == 405 and "errors" in wrong_method.json()


def test_malformed_requests_are_400_in_their_shape_and_change_nothing(served):
    game = served.world.server("g").datastores.get_data_store("players")
    bad_json = served.request("POST", V1, params=ENTRY, data=b"{not json", headers={"content-type": "text/plain"})
    assert bad_json.status_code == 400 and bad_json.json()["errorDetails"][0]["datastoreErrorCode"] == "ContentNotJson"
    bad_md5 = served.request("POST", V1, params=ENTRY, data=b"1", headers={"content-md5": "AAAA"})
    assert bad_md5.status_code == 400
    long_key = served.request("POST", V1, params={**ENTRY, "entryKey": "k" * 51}, json=1)
    assert long_key.status_code == 400 and long_key.json()["errorDetails"][0]["datastoreErrorCode"] == "InvalidEntryKey"
    too_big = served.request("POST", V1, params=ENTRY, data=b'"' + b"x" * 4_200_000 + b'"')
    assert too_big.status_code == 400 and too_big.json()["errorDetails"][0]["datastoreErrorCode"] == "ContentTooBig"
    no_store = served.request("GET", V1, params={"entryKey": "user_1"})
    assert no_store.status_code == 400
    bad_users = served.request("POST", V1, params=ENTRY, json=1, headers={"roblox-entry-userids": "[true]"})
    assert bad_users.status_code == 400
    bad_page = served.request("GET", "cloud/v2/universes/1/data-stores/players/scopes/global/entries",
                              params={"maxPageSize": "many"})
    assert bad_page.status_code == 400 and bad_page.json()["code"] == "INVALID_ARGUMENT"
    bad_filter = served.request("GET", "cloud/v2/universes/1/memory-store/sorted-maps/m/items",
                                params={"filter": "id ~ 3"})
    assert bad_filter.status_code == 400
    nan = served.request("PATCH", "cloud/v2/universes/1/data-stores/players/entries/user_1?allowMissing=true",
                         data=b'{"value": NaN}')
    assert nan.status_code == 400
    assert game.get("user_1") == (None, None)


def test_v1_allows_300_requests_a_minute_per_class_then_429_with_retry_after(experience, served, clock):
    store = experience.get_datastore("players")   # its set, increment and remove are v1 writes
    for i in range(300):
        assert served.request("GET", V1, params=ENTRY).status_code == 404
        clock.advance(0.1)
    answer = served.request("GET", V1, params=ENTRY)
    assert answer.status_code == 429 and answer.json()["errorDetails"][0]["datastoreErrorCode"] == "TooManyRequests"
    assert answer.headers["x-ratelimit-limit"] == "300" and answer.headers["x-ratelimit-remaining"] == "0"
    assert 30 <= int(answer.headers["retry-after"]) <= 31   # the first of them leaves the minute then
    store.set_entry("user_1", 2)     # writes are another class
    assert store.get_entry("user_1")[0] == 2   # and v2 is not limited here (the experience budget is the world's)
    clock.advance(int(answer.headers["retry-after"]))
    assert served.request("GET", V1, params=ENTRY).status_code == 200
    for _ in range(299):
        store.increment_entry("visits", 1)
    with pytest.raises(RateLimited):
        store.increment_entry("visits", 1)


def test_v1_limits_the_bytes_written_a_minute(served, clock):
    value = b'"' + b"x" * 3_000_000 + b'"'   # each key on its own (a key takes 4 MB a minute)
    for i in range(3):
        assert served.request("POST", V1, params={**ENTRY, "entryKey": f"k{i}"}, data=value).status_code == 200
    refused = served.request("POST", V1, params={**ENTRY, "entryKey": "k3"}, data=value)   # past 10 MB a minute
    assert refused.status_code == 429 and "retry-after" in refused.headers
    assert served.request("POST", V1, params={**ENTRY, "entryKey": "small"}, data=b"1").status_code == 200
    clock.advance(61)
    assert served.request("POST", V1, params={**ENTRY, "entryKey": "k3"}, data=value).status_code == 200


def test_a_throttled_world_answers_429_with_retry_after(clock):
    faults = FaultConfig(outages=(Outage(START_MS, START_MS + 60_000, code=301),))
    for served in serve(World.in_process(clock=clock, budget=None, faults=faults)):
        store = rblxopencloud.Experience(1, DEFAULT_API_KEY).get_datastore("players")
        with pytest.raises(RateLimited):
            store.get_entry("user_1")
        answer = served.request("GET", "cloud/v2/universes/1/data-stores/players/entries/user_1")
        assert answer.status_code == 429 and answer.json()["code"] == "RESOURCE_EXHAUSTED"
        assert answer.headers["retry-after"] == "1"
        clock.advance(61)
        with pytest.raises(rblxopencloud.NotFound):
            store.get_entry("user_1")


def test_error_mapping_of_typed_errors():
    spent = DataStoreError(429, "GetAsyncExperienceThrottled", "the experience's read budget is spent")
    spent.retry_after_ms = 2500
    mapped = from_exception(spent)
    assert (mapped.status, mapped.code, mapped.headers["retry-after"]) == (429, "RESOURCE_EXHAUSTED", "3")
    assert from_exception(DataStoreError(302, "SetAsyncThrottle", "queue full")).status == 429
    assert from_exception(DataStoreError(105, "ValueTooLarge", "big")).status == 400
    assert from_exception(DataStoreError(502, "RequestRejected", "down")).status == 500
    deleted = from_exception(DataStoreError(*DATASTORE_DELETED, "data store 'players' was deleted"))
    assert (deleted.status, deleted.code, deleted.v1_code) == (404, "NOT_FOUND", "DatastoreNotFound")
    assert from_exception(MemoryStoreError("TotalMemoryOverLimit", "full")).status == 429
    assert from_exception(MemoryStoreError("InvalidRequest", "bad")).status == 400
    assert from_exception(MessagingServiceError("MessageTooLarge", "2000 bytes")).status == 400
    throttled = from_exception(MessagingServiceError("PublishThrottled", "600 a minute"))
    assert (throttled.status, throttled.headers["retry-after"]) == (429, "1")
    assert from_exception(ConfigError("bad name")).status == 400
    assert from_exception(RuntimeError("bug")) is None


def test_the_app_uses_the_worlds_open_cloud_client_when_it_has_one(clock):
    world = World.in_process(clock=clock, budget=None)
    made = []
    world.open_cloud = lambda: made.append(1) or world.server("oc-client")
    for served in serve(world):
        assert made == [1]
        assert served.app.state.opencloud.server.job_id == "oc-client"


def test_statistics_count_requests_by_endpoint_and_status(served):
    served.request("GET", V1, params=ENTRY)
    served.request("GET", V1, params=ENTRY, key=None)
    served.request("GET", "nowhere")
    stats = served.statistics()
    endpoint = "GET /datastores/v1/universes/{universe}/standard-datastores/datastore/entries/entry"
    assert stats.requests[endpoint] == {401: 1, 404: 1}
    assert stats.requests["unknown"] == {404: 1} and stats.total == 3


def test_v1_limits_refuse_reads_once_the_minutes_read_bytes_are_spent():
    now = [0]
    limits = V1Limits(lambda: now[0])
    assert limits.admit("read").allowed
    limits.count_read(20 * 1024 * 1024)
    refused = limits.admit("list")
    assert not refused.allowed and refused.headers()["retry-after"] == "60"
    assert limits.admit("write", 100).allowed          # writes spend another allowance
    now[0] = 60_000
    assert limits.admit("read").allowed

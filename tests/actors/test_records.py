"""The record layout, checksums, shards, patches, transaction resolution and frozen data (actors/_records.py)."""

from __future__ import annotations

import base64
import copy
import json
import math
import pickle
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lodestore.actors._records import (
    MAX_DATA_DEPTH,
    RECORD_NESTING,
    SHARD_LIMIT_CHARS,
    FrozenDict,
    RecordError,
    apply_patch,
    check_data,
    check_record,
    checksum,
    committed,
    freeze,
    is_record,
    make_file,
    make_patch,
    new_record,
    pending_txinfo,
    read_file,
    shard_key,
    shard_keys,
    thaw,
    tx_id_of,
)
from lodestore.storage import (MAX_DEPTH, MAX_KEY_NAME, MAX_VALUE_CHARS, DataStoreError, LodestoreError, canonical,
                               check_key, check_value, decode, encode)
from tests.actors._rig import nested


def compact_len(value) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def noise(n: int, seed: int = 0) -> str:
    """n characters of incompressible base64 text."""
    raw = random.Random(seed).randbytes(n * 3 // 4 + 3)
    return base64.b64encode(raw).decode("ascii")[:n]


def ids(*values: str):
    it = iter(values)
    return lambda: next(it)


# --- records ------------------------------------------------------------------------------------------------------


def test_new_record_layout_is_storable_and_recognised():
    record = new_record({"coins": 5}, ("m1", "m2"), "lock-1")
    assert record == {
        "applied_migrations": ["m1", "m2"],
        "session": "lock-1",
        "file": {"data": {"committed_data": {"coins": 5}}},
        "orphaned_files": [],
    }
    assert is_record(record) and check_record(record) is record
    check_value(record)
    assert decode(encode(record)) == record
    assert is_record(decode(encode(record)))
    assert tx_id_of(record) is None
    assert is_record(new_record(None, [], None))


def test_new_record_refuses_wrong_types():
    with pytest.raises(TypeError, match="applied_migrations must be a list of str"):
        new_record({}, "m1", None)
    with pytest.raises(TypeError, match=r"applied_migrations\[1\] is 2 \(int\)"):
        new_record({}, ["m1", 2], None)
    with pytest.raises(TypeError, match="session must be a str or None"):
        new_record({}, [], 7)


def test_record_with_sharded_file_and_orphans_is_a_record():
    record = new_record(None, [], "s")
    record["file"] = {"shard": "abc", "count": 3}
    record["orphaned_files"] = [{"shard": "old", "count": 1}]
    assert is_record(record)
    assert tx_id_of(record) is None
    # Only the two required keys: older or partial layouts still count.
    assert is_record({"applied_migrations": [], "file": {"data": {"committed_data": 1}}})


def _with(**changes):
    record = new_record({"coins": 1}, ["m1"], "s")
    record.update(changes)
    return record


@pytest.mark.parametrize(
    "value, problem",
    [
        (None, "record is None (NoneType), not a dict"),
        ({"coins": 10}, "record has no 'applied_migrations'"),
        ("legacy string", "not a dict"),
        (_with(applied_migrations="m1"), "record['applied_migrations'] is 'm1' (str), not a list"),
        (_with(applied_migrations=["m1", 3]), "record['applied_migrations'][1] is 3 (int), not a str"),
        (_with(session=5), "record['session'] is 5 (int), not a str or None"),
        ({"applied_migrations": []}, "record has no 'file'"),
        (_with(file=[1]), "record['file'] is [1] (list), not a dict"),
        (_with(file={}), "record['file'] has neither 'data' nor 'shard'"),
        (_with(file={"data": 5}), "record['file']['data'] is 5 (int), not a dict"),
        (_with(file={"data": {"coins": 1}}), "record['file']['data'] has no 'committed_data'"),
        (_with(file={"data": {"committed_data": 1, "tx_id": 9}}), "record['file']['data']['tx_id'] is 9"),
        (_with(file={"data": {"committed_data": 1, "tx_patch": "x"}}), "record['file']['data']['tx_patch']"),
        (_with(file={"data": {"committed_data": 1}, "shard": "a", "count": 1}), "has both 'data' and 'shard'"),
        (_with(file={"shard": "", "count": 1}), "record['file']['shard'] is '' (str), not a non-empty str"),
        (_with(file={"shard": 5, "count": 1}), "record['file']['shard'] is 5 (int)"),
        (_with(file={"shard": "a", "count": 0}), "record['file']['count'] is 0 (int); it must be an int >= 1"),
        (_with(file={"shard": "a", "count": True}), "record['file']['count'] is True (bool)"),
        (_with(file={"shard": "a", "count": 2.0}), "record['file']['count'] is 2.0 (float)"),
        (_with(file={"shard": "a"}), "record['file']['count'] is None"),
        (_with(orphaned_files={}), "record['orphaned_files'] is {} (dict), not a list"),
        (_with(orphaned_files=[{"shard": "a", "count": -1}]), "record['orphaned_files'][0]['count'] is -1"),
        (_with(orphaned_files=[{"data": {"committed_data": 1}}]), "only sharded files can be orphaned"),
    ],
)
def test_malformed_records_are_refused_with_the_problem_named(value, problem):
    assert not is_record(value)
    with pytest.raises(RecordError) as info:
        check_record(value)
    assert problem in str(info.value)
    assert isinstance(info.value, LodestoreError)


def test_tx_id_of_reads_the_inline_transaction_and_refuses_garbage():
    record = new_record({"a": 1}, [], "s")
    record["file"]["data"].update(tx_id="tx-1", tx_patch=[])
    assert tx_id_of(record) == "tx-1"
    with pytest.raises(RecordError, match=r"record\['file'\] is None"):
        tx_id_of({"applied_migrations": []})


# --- checksums ----------------------------------------------------------------------------------------------------


def test_checksum_ignores_representation_differences():
    a = {"b": 1.0, "a": (2.5, True, None), "c": {"y": "é", "x": [1, 2]}}
    b = {"c": {"x": (1.0, 2), "y": "é"}, "a": [2.5, True, None], "b": 1}
    assert checksum(a) == checksum(b) == checksum(freeze(a))
    assert len(checksum(a)) == 32 and int(checksum(a), 16) >= 0


@pytest.mark.parametrize(
    "a, b",
    [(True, 1), (False, 0), (None, 0), ("1", 1), ([1, 2], [2, 1]), ({"a": 1}, {"a": 1, "b": None}), (0.5, 1),
     ({"a": [1]}, {"a": 1}), ("", [])],
)
def test_checksum_differs_for_different_data(a, b):
    assert checksum(a) != checksum(b)


# --- files and shards ---------------------------------------------------------------------------------------------


def test_small_data_is_inline_and_reads_back():
    data = {"coins": 5, "items": ["sword"]}
    file, chunks = make_file(data)
    assert file == {"data": {"committed_data": data}} and chunks == {}
    assert shard_keys(file) == []
    assert read_file(file, []) is data
    assert read_file(file, ["ignored", None]) is data


def test_the_limit_applies_to_the_txinfo_json_length():
    data = {"s": "x" * 150}
    size = compact_len({"committed_data": data})
    inline, _ = make_file(data, limit=size)
    assert "data" in inline
    sharded, chunks = make_file(data, limit=size - 1, new_id=ids("abc"))
    assert sharded["shard"] == "abc" and len(chunks) == sharded["count"] >= 1
    assert read_file(sharded, [chunks[k] for k in shard_keys(sharded)]) == data


def test_tiny_limit_splits_into_many_chunks_that_round_trip():
    data = {"name": "ana", "blob": noise(2_000, seed=1), "list": [1, 2.5, None, True, "é☃"], "nested": {"a": {}}}
    file, chunks = make_file(data, limit=200, new_id=ids("f00d"))
    assert file == {"shard": "f00d", "count": len(chunks)}
    assert file["count"] > 5
    keys = shard_keys(file)
    assert keys == [shard_key("f00d", i) for i in range(file["count"])] == list(chunks)
    assert keys[:2] == ["f00d-0", "f00d-1"]
    assert all(isinstance(c, str) and 1 <= len(c) <= 200 for c in chunks.values())
    assert all(c.isascii() for c in chunks.values())
    back = read_file(file, [chunks[k] for k in keys])
    assert back == data and canonical(back) == canonical(data)
    assert is_record({**new_record(None, [], "s"), "file": file})


def test_sharded_data_comes_back_with_lists_for_tuples():
    data = {"t": (1, (2, 3)), "blob": noise(500)}
    file, chunks = make_file(data, limit=100)
    assert read_file(file, list(chunks.values())) == {"t": [1, [2, 3]], "blob": data["blob"]}


def test_default_ids_are_fresh_uuid_hex_and_keys_are_valid():
    data = {"blob": noise(1_000)}
    file_a, chunks_a = make_file(data, limit=100)
    file_b, _ = make_file(data, limit=100)
    assert file_a["shard"] != file_b["shard"]
    assert len(file_a["shard"]) == 32 and int(file_a["shard"], 16) >= 0
    for key in chunks_a:
        assert check_key(key) == key


def test_multi_megabyte_data_shards_at_the_real_limit():
    data = {f"part{i}": noise(1_000_000, seed=i) for i in range(9)}
    data["meta"] = {"owner": 12, "tags": ["a", "b"]}
    with pytest.raises(DataStoreError) as info:
        check_value(data)  # too large for one value: that is why it is sharded
    assert info.value.code == 105
    file, chunks = make_file(data)
    assert file["count"] == len(chunks) >= 3
    for key, chunk in chunks.items():
        assert check_key(key) == key and len(key) <= MAX_KEY_NAME
        assert len(chunk) <= SHARD_LIMIT_CHARS
        assert check_value(chunk) <= MAX_VALUE_CHARS
    assert read_file(file, [chunks[k] for k in shard_keys(file)]) == data


def test_data_just_over_one_value_is_sharded_not_refused():
    data = {"blob": noise(SHARD_LIMIT_CHARS)}
    file, chunks = make_file(data)
    assert "shard" in file and file["count"] == len(chunks) == 2
    assert read_file(file, [chunks[k] for k in shard_keys(file)]) == data


@pytest.mark.parametrize(
    "data, code, where",
    [
        ({"a": math.nan}, 103, 'data["a"] is nan'),
        ({"a": [1, {2: 3}]}, 103, "has key 2 (int)"),
        ({"a": object()}, 104, 'data["a"]'),
        (FrozenDict(a=1), 104, "FrozenDict"),
    ],
)
def test_unstorable_small_data_is_refused(data, code, where):
    with pytest.raises(DataStoreError) as info:
        make_file(data, limit=10)
    assert info.value.code == code and where in str(info.value)


def _big() -> str:
    return "x" * (MAX_VALUE_CHARS + 10)


@pytest.mark.parametrize(
    "make, code, where",
    [
        (lambda: {"big": _big(), "more": {"bad": math.inf}}, 103, 'data["more"]["bad"] is inf'),
        (lambda: {"big": _big(), "more": [{1: 2}]}, 103, 'data["more"][0] has key 1 (int)'),
        (lambda: {"big": _big(), "more": {"n": 2**70}}, 104, "outside the signed 64-bit range"),
        (lambda: {"big": _big() + "\ud800"}, 103, f"lone surrogate '\\ud800' at index {MAX_VALUE_CHARS + 10}"),
        (lambda: [_big(), {"set": {1}}], 104, 'data[1]["set"] is {1} (set)'),
    ],
)
def test_unstorable_large_data_is_refused_part_by_part(make, code, where):
    with pytest.raises(DataStoreError) as info:
        make_file(make())
    assert info.value.code == code and where in str(info.value)


def test_large_cycles_are_refused_and_shared_parts_are_checked_once():
    cyclic = {"big": _big(), "more": {}}
    cyclic["more"]["back"] = cyclic
    with pytest.raises(DataStoreError) as info:
        make_file(cyclic)
    assert info.value.code == 104 and "cycle" in str(info.value)
    shared = ["y" * 3_000_000]
    file, chunks = make_file({"a": shared, "b": shared})
    assert read_file(file, list(chunks.values())) == {"a": shared, "b": shared}


def test_bad_limits_and_ids_are_refused():
    for limit in (0, -1, MAX_VALUE_CHARS - 1, 10.0, True):
        with pytest.raises(ValueError, match="limit must be an int"):
            make_file({}, limit=limit)
    with pytest.raises(ValueError, match="within 50 characters"):
        make_file({"blob": noise(500)}, limit=100, new_id=lambda: "k" * 49)
    with pytest.raises(ValueError, match="new_id"):
        make_file({"blob": noise(500)}, limit=100, new_id=lambda: "")


@pytest.fixture
def sharded():
    data = {"blob": noise(1_000, seed=7), "n": 1}
    file, chunks = make_file(data, limit=300, new_id=ids("s1"))
    return data, file, [chunks[k] for k in shard_keys(file)]


def test_read_file_refuses_missing_chunks(sharded):
    _, file, chunks = sharded
    chunks[1] = None
    with pytest.raises(RecordError, match=r"chunk 1 of \d+ \('s1-1'\) is missing"):
        read_file(file, chunks)


def test_read_file_refuses_a_wrong_count(sharded):
    _, file, chunks = sharded
    with pytest.raises(RecordError, match=rf"shard 's1' has {file['count']} chunks, but {len(chunks) - 1} were given"):
        read_file(file, chunks[:-1])
    with pytest.raises(RecordError, match="were given"):
        read_file({**file, "count": file["count"] + 1}, chunks)


def test_read_file_refuses_corrupt_chunks(sharded):
    _, file, chunks = sharded
    swapped = [chunks[1], chunks[0], *chunks[2:]]
    with pytest.raises(RecordError, match="do not decode"):
        read_file(file, swapped)
    altered = list(chunks)
    altered[0] = ("A" if altered[0][20] != "A" else "B").join((altered[0][:20], altered[0][21:]))
    with pytest.raises(RecordError, match="do not decode"):
        read_file(file, altered)
    with pytest.raises(RecordError, match="do not decode: Error"):  # binascii.Error: not base64
        read_file(file, ["!!!" + chunks[0], *chunks[1:]])
    with pytest.raises(RecordError, match=r"chunk 0 of \d+ \('s1-0'\) is a bytes, not a str"):
        read_file(file, [chunks[0].encode(), *chunks[1:]])


def test_read_file_refuses_json_it_would_not_have_written():
    def packed(text: bytes) -> str:
        import zlib

        return base64.b64encode(zlib.compress(text)).decode()

    for text, problem in [(b'{"a": NaN}', "NaN is not a storable number"), (b'{"a":', "JSONDecodeError"),
                          (b"\xff\xfe", "UnicodeDecodeError")]:
        with pytest.raises(RecordError, match=problem):
            read_file({"shard": "z", "count": 1}, [packed(text)])


def test_read_file_and_shard_keys_refuse_malformed_files():
    with pytest.raises(RecordError, match="file has neither 'data' nor 'shard'"):
        read_file({}, [])
    with pytest.raises(RecordError, match=r"file\['count'\] is 0"):
        shard_keys({"shard": "a", "count": 0})


# --- patches ------------------------------------------------------------------------------------------------------


def test_patch_format():
    before = {"coins": 5, "items": ["sword"], "stats": {"hp": 10, "mp": 3}, "old": True}
    after = {"coins": 7, "items": ["sword", "shield"], "stats": {"hp": 10, "xp": 1}, "new": None}
    patch = make_patch(before, after)
    assert patch == [
        {"op": "replace", "path": ["coins"], "value": 7},
        {"op": "replace", "path": ["items"], "value": ["sword", "shield"]},
        {"op": "add", "path": ["new"], "value": None},
        {"op": "remove", "path": ["old"]},
        {"op": "remove", "path": ["stats", "mp"]},
        {"op": "add", "path": ["stats", "xp"], "value": 1},
    ]
    check_value(patch)
    assert apply_patch(before, patch) == after


@pytest.mark.parametrize(
    "before, after",
    [({"a": 1}, [1]), (1, "1"), (None, {}), ([1, 2], [1, 2, 3]), (True, 1), (1, True), ([True], [1])],
)
def test_values_that_are_not_both_dicts_are_replaced_whole(before, after):
    patch = make_patch(before, after)
    assert patch == [{"op": "replace", "path": [], "value": after}]
    result = apply_patch(before, patch)
    assert canonical(result) == canonical(after)
    nested = make_patch({"x": {"y": before}}, {"x": {"y": after}})
    assert nested == [{"op": "replace", "path": ["x", "y"], "value": after}]


@pytest.mark.parametrize(
    "before, after",
    [({"a": 1}, {"a": 1.0}), ([1, (2,)], ((1.0, [2]))), ({"x": {"b": 1, "a": 2}}, {"x": {"a": 2, "b": 1}}), (0.0, -0.0),
     ({"a": [True]}, freeze({"a": [True]}))],
)
def test_equal_data_gives_an_empty_patch(before, after):
    assert make_patch(before, after) == []
    assert make_patch(after, before) == []


def test_apply_patch_leaves_before_and_patch_alone():
    before = {"stats": {"hp": 10}, "items": ["a"], "keep": {"deep": [1, {"x": 1}]}}
    snapshot = copy.deepcopy(before)
    patch = make_patch(before, {"stats": {"hp": 11, "bag": [1]}, "items": ["a", "b"], "keep": before["keep"]})
    patch_snapshot = copy.deepcopy(patch)
    result = apply_patch(before, patch)
    assert before == snapshot
    result["stats"]["bag"].append(2)
    result["keep"]["deep"][1]["x"] = 99
    result["items"].append("c")
    assert before == snapshot and patch == patch_snapshot
    assert result is not before


def test_make_patch_values_share_nothing_with_after():
    after = {"new": {"list": [1, 2]}}
    patch = make_patch({}, after)
    patch[0]["value"]["list"].append(3)
    assert after == {"new": {"list": [1, 2]}}
    frozen_patch = make_patch({"a": 1}, freeze({"a": {"b": [1]}}))
    assert frozen_patch == [{"op": "replace", "path": ["a"], "value": {"b": [1]}}]
    assert type(frozen_patch[0]["value"]) is dict and type(frozen_patch[0]["value"]["b"]) is list


def test_apply_patch_accepts_frozen_before_and_returns_plain_data():
    result = apply_patch(freeze({"a": {"b": [1]}, "c": 1}), [{"op": "remove", "path": ["c"]}])
    assert result == {"a": {"b": [1]}}
    assert type(result) is dict and type(result["a"]) is dict and type(result["a"]["b"]) is list


def test_a_root_replace_patch_replaces_everything():
    assert apply_patch({"a": 1}, [{"op": "replace", "path": [], "value": [1, 2]}]) == [1, 2]


@pytest.mark.parametrize(
    "before, patch, message",
    [
        ({}, {"op": "add"}, "a patch must be a list of ops, got {'op': 'add'} (dict)"),
        ({}, ["add"], "patch op 0 is 'add' (str), not a dict"),
        ({}, [{"op": "move", "path": ["a"]}], "patch op 0 has op 'move'; it must be one of add, replace, remove"),
        ({}, [{"op": "add", "path": "a", "value": 1}], "patch op 0 (add) has path 'a'; it must be a list of str"),
        ({}, [{"op": "add", "path": [0], "value": 1}], "patch op 0 (add) has path [0]"),
        ({}, [{"op": "add", "path": ["a"]}], 'patch op 0 (add ["a"]) has no \'value\''),
        ({"a": 1}, [{"op": "remove", "path": ["a"]}, {"op": "replace", "path": ["a"], "value": 2}],
         'patch op 1 (replace ["a"]): ["a"] does not exist'),
        ({"a": 1}, [{"op": "add", "path": ["a"], "value": 2}], 'patch op 0 (add ["a"]): ["a"] already exists'),
        ({}, [{"op": "remove", "path": ["a"]}], 'patch op 0 (remove ["a"]): ["a"] does not exist'),
        ({"a": {}}, [{"op": "add", "path": ["a", "b", "c"], "value": 1}],
         'patch op 0 (add ["a","b","c"]): ["a","b"] does not exist'),
        ({"a": [1]}, [{"op": "add", "path": ["a", "b"], "value": 1}], 'patch op 0 (add ["a","b"]): ["a"] is a list'),
        (5, [{"op": "replace", "path": ["a"], "value": 1}], "patch op 0 (replace [\"a\"]): [] is a int, not a dict"),
        ({}, [{"op": "remove", "path": []}], "patch op 0 (remove []): only 'replace' can target the whole value"),
    ],
)
def test_patches_that_do_not_fit_are_refused(before, patch, message):
    snapshot = copy.deepcopy(before)
    with pytest.raises(RecordError) as info:
        apply_patch(before, patch)
    assert message in str(info.value)
    assert before == snapshot


KEYS = st.sampled_from(["a", "b", "c", "d", "é", ""])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=16,
)
DICTS = st.dictionaries(KEYS, JSON, max_size=5)


@st.composite
def edited(draw):
    """A dict and a copy with a few edits at random depths, so the diff recurses."""
    before = draw(DICTS)
    after = thaw(before)
    for _ in range(draw(st.integers(0, 4))):
        node = after
        while True:
            dicts = [k for k, v in node.items() if isinstance(v, dict)]
            if not dicts or draw(st.booleans()):
                break
            node = node[draw(st.sampled_from(sorted(dicts)))]
        key = draw(KEYS)
        if key in node and draw(st.booleans()):
            del node[key]
        else:
            node[key] = draw(JSON)
    return before, after


def _check_round_trip(before, after):
    snapshot = copy.deepcopy(before)
    patch = make_patch(before, after)
    check_value(patch)
    result = apply_patch(before, patch)
    assert canonical(result) == canonical(after)
    assert before == snapshot and canonical(before) == canonical(snapshot)
    assert (patch == []) == (canonical(before) == canonical(after))
    assert make_patch(result, after) == []


@settings(max_examples=200, deadline=None)
@given(JSON, JSON)
def test_patch_round_trips_for_any_values(before, after):
    _check_round_trip(before, after)


@settings(max_examples=200, deadline=None)
@given(edited())
def test_patch_round_trips_for_edited_dicts(pair):
    _check_round_trip(*pair)
    before, after = pair
    result = apply_patch(freeze(before), make_patch(freeze(before), freeze(after)))
    assert canonical(result) == canonical(after)


# --- transactions -------------------------------------------------------------------------------------------------


def test_committed_without_a_transaction_is_the_committed_data():
    data = {"coins": 1}
    assert committed({"committed_data": data}, None) is data
    assert committed({"committed_data": data, "tx_id": None}, None) is data
    assert committed({"committed_data": data}, True) is data


def test_committed_resolves_a_transaction_by_its_marker():
    before = {"coins": 10, "items": ["a"]}
    after = {"coins": 4, "items": ["a", "b"]}
    txinfo = {"committed_data": before, "tx_id": "tx-9", "tx_patch": make_patch(before, after)}
    snapshot = copy.deepcopy(txinfo)
    assert committed(txinfo, True) is before  # marker still there: not committed (or rolled back)
    assert committed(txinfo, False) == after  # marker gone: committed
    assert txinfo == snapshot
    stored = decode(encode(txinfo))  # as read back from a DataStore
    assert committed(stored, False) == after
    assert tx_id_of({**new_record(None, [], "s"), "file": {"data": stored}}) == "tx-9"


def test_committed_refuses_what_it_cannot_resolve():
    txinfo = {"committed_data": {"a": 1}, "tx_id": "tx-1", "tx_patch": []}
    for unknown in (None, 0, "no"):
        with pytest.raises(ValueError, match="tx_id 'tx-1': look its marker up"):
            committed(txinfo, unknown)
    with pytest.raises(RecordError, match="transaction 'tx-1' committed .* has no 'tx_patch'"):
        committed({"committed_data": 1, "tx_id": "tx-1"}, False)
    with pytest.raises(RecordError, match="must be a dict with 'committed_data'"):
        committed({"data": 1}, None)
    bad_patch = {"committed_data": {}, "tx_id": "tx-2", "tx_patch": [{"op": "remove", "path": ["x"]}]}
    with pytest.raises(RecordError, match=r'\["x"\] does not exist'):
        committed(bad_patch, False)
    assert committed(bad_patch, True) == {}


# --- frozen data --------------------------------------------------------------------------------------------------

NESTED = {"coins": 5, "inv": [{"id": "sword", "tags": ["sharp"]}, 3], "stats": {"deep": {"deeper": {"x": [1, [2]]}}}}


def _mutations(frozen):
    yield lambda: frozen.__setitem__("k", 1)
    yield lambda: frozen.__delitem__("coins")
    yield lambda: frozen.update(k=1)
    yield lambda: frozen.pop("coins")
    yield lambda: frozen.popitem()
    yield lambda: frozen.clear()
    yield lambda: frozen.setdefault("k", 1)
    yield lambda: frozen.__ior__({"k": 1})
    yield lambda: setattr(frozen, "_data", {})


def test_frozen_data_refuses_mutation_at_every_depth():
    frozen = freeze(NESTED)
    targets = [frozen, frozen["stats"], frozen["stats"]["deep"], frozen["stats"]["deep"]["deeper"], frozen["inv"][0]]
    for target in targets:
        assert isinstance(target, FrozenDict)
        for mutate in _mutations(target):
            with pytest.raises(TypeError):
                mutate()
    for seq in (frozen["inv"], frozen["inv"][0]["tags"], frozen["stats"]["deep"]["deeper"]["x"][1]):
        assert isinstance(seq, tuple)
        with pytest.raises(TypeError):
            seq[0] = 1  # type: ignore[index]
    with pytest.raises(TypeError, match="read-only"):
        frozen["coins"] = 6
    with pytest.raises(TypeError, match="read-only"):
        frozen["stats"]["deep"]["new"] = 1
    with pytest.raises(TypeError, match="read-only"):
        del frozen["stats"]["deep"]["deeper"]
    assert thaw(frozen) == NESTED


def test_freeze_copies_and_thaw_inverts():
    data = copy.deepcopy(NESTED)
    frozen = freeze(data)
    data["stats"]["deep"]["deeper"]["x"].append(9)
    assert frozen["stats"]["deep"]["deeper"]["x"] == (1, (2,))
    assert thaw(freeze(NESTED)) == NESTED
    assert freeze(5) == 5 and freeze("s") == "s" and freeze(None) is None and thaw(1.5) == 1.5


def test_frozen_dict_is_a_read_only_mapping():
    frozen = freeze({"a": 1, "b": [1, 2]})
    assert frozen == {"a": 1, "b": [1, 2]} and {"a": 1, "b": [1, 2]} == frozen
    assert frozen != {"a": 1} and frozen != {"a": 1, "b": [2, 1]} and frozen != [("a", 1)]
    assert frozen == FrozenDict(a=1, b=(1, 2))
    assert len(frozen) == 2 and list(frozen) == ["a", "b"] and "a" in frozen and "z" not in frozen
    assert frozen.get("z", 0) == 0 and dict(frozen.items()) == {"a": 1, "b": (1, 2)}
    assert repr(frozen) == "FrozenDict({'a': 1, 'b': (1, 2)})"
    with pytest.raises(TypeError):
        hash(frozen)
    for clone in (pickle.loads(pickle.dumps(frozen)), copy.deepcopy(frozen), copy.copy(frozen)):
        assert isinstance(clone, FrozenDict) and clone == frozen


def _plain_all_the_way(value) -> bool:
    if isinstance(value, (FrozenDict, tuple)):
        return False
    if isinstance(value, dict):
        return all(_plain_all_the_way(v) for v in value.values())
    if isinstance(value, list):
        return all(_plain_all_the_way(v) for v in value)
    return True


def test_thaw_converts_mixed_structures_fully():
    frozen = freeze(NESTED)
    updated = {**frozen, "coins": 6, "inv": [*frozen["inv"], freeze({"id": "shield"})]}
    assert not _plain_all_the_way(updated)
    plain = thaw(updated)
    assert _plain_all_the_way(plain)
    assert plain == {**NESTED, "coins": 6, "inv": [*NESTED["inv"], {"id": "shield"}]}
    check_value(plain)
    assert thaw(frozen) == NESTED and _plain_all_the_way(thaw(frozen))


@settings(max_examples=100, deadline=None)
@given(JSON)
def test_freeze_thaw_round_trip_for_any_value(value):
    frozen = freeze(value)
    plain = thaw(frozen)
    assert _plain_all_the_way(plain)
    assert canonical(plain) == canonical(value)
    assert checksum(frozen) == checksum(value)


# --- how deep data may nest (issue 18: data Roblox stores alone, but not inside its record) ---------------------


def test_every_record_holding_the_deepest_accepted_data_is_storable():
    deepest = nested(MAX_DATA_DEPTH)
    assert check_data(deepest) > 0
    saved = new_record(deepest, [], "s")
    in_tx = new_record(None, [], "s", file={"data": pending_txinfo(deepest, "t", make_patch([], deepest))})
    for record in (saved, in_tx):                # the phase-one record, its patch replacing all of it, is the deepest
        check_value(record)
    with pytest.raises(DataStoreError, match=f"more than {MAX_DEPTH} deep"):
        check_value(new_record(None, [], "s", file={"data": pending_txinfo([], "t", make_patch([], [deepest]))}))
    assert RECORD_NESTING == 5 and MAX_DATA_DEPTH == MAX_DEPTH - 5


def test_data_deeper_than_its_records_allow_is_refused_with_104_saying_why():
    too_deep = nested(MAX_DATA_DEPTH + 1)
    check_value(too_deep)                        # Roblox stores it as a value of its own
    with pytest.raises(DataStoreError, match=f"data for key 'u1' nests containers more than {MAX_DATA_DEPTH} deep "
                                             f"\\(it is stored inside {RECORD_NESTING} more") as caught:
        check_data(too_deep, what="data for key 'u1'")
    assert caught.value.code == 104

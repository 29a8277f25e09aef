"""What a DataStore accepts, how big Roblox says it is, and the bytes kept for it (storage/_values.py)."""

from __future__ import annotations

import collections
import enum
import json
import sys
from decimal import Decimal

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lodestore.storage._errors import DataStoreError
from lodestore.storage._limits import (
    LIST_KEYS_DEFAULT_PAGE,
    MAX_LIST_PAGE,
    MAX_METADATA_KEY,
    MAX_METADATA_TOTAL,
    MAX_METADATA_VALUE,
    MAX_USER_IDS,
    MAX_VALUE_CHARS,
)
from lodestore.storage._values import (
    MAX_DEPTH,
    canonical,
    check_key,
    check_metadata,
    check_page_size,
    check_scope,
    check_store_name,
    check_user_ids,
    check_value,
    decode,
    encode,
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def roblox_len(value) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False))


def refused(code: int, fn, *args, **kwargs) -> str:
    """Call fn, expect DataStoreError with `code`; return its message."""
    with pytest.raises(DataStoreError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, str(info.value)
    return info.value.message


def nested_lists(depth: int, leaf=0):
    v = leaf
    for _ in range(depth):
        v = [v]
    return v


def as_lists(v):
    if isinstance(v, (list, tuple)):
        return [as_lists(x) for x in v]
    if isinstance(v, dict):
        return {k: as_lists(x) for k, x in v.items()}
    return v


# --- sizes --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, -1, INT64_MAX, 1.5, -0.0, 1e300, "", "héllo ✓ 金币 😀",
     'quote " back \\ nl \n tab \t \x00', [], {}, (), [1, "a", None], {"coins": 10, "items": ["sword", {"id": 3}]},
     ("a", (1, 2))],
)
def test_size_is_the_length_of_the_compact_json_in_characters(value) -> None:
    assert check_value(value) == roblox_len(value)


def test_non_ascii_counts_characters_not_bytes() -> None:
    assert check_value("😀é") == 4


def test_value_of_exactly_the_limit_is_accepted_and_one_more_is_refused() -> None:
    assert check_value("x" * (MAX_VALUE_CHARS - 2)) == MAX_VALUE_CHARS  # 2 quote characters
    message = refused(105, check_value, "x" * (MAX_VALUE_CHARS - 1))
    assert str(MAX_VALUE_CHARS + 1) in message and str(MAX_VALUE_CHARS) in message


def test_size_limit_counts_what_json_adds() -> None:
    # ["s...",1] is len(s) + 6: numbers and separators push it over, so the exact size is reported.
    assert check_value(["x" * (MAX_VALUE_CHARS - 6), 1]) == MAX_VALUE_CHARS
    message = refused(105, check_value, ["x" * (MAX_VALUE_CHARS - 5), 1])
    assert f"is {MAX_VALUE_CHARS + 1} characters" in message
    # escapes count too: "\n" is two characters of JSON
    assert check_value("\n" * ((MAX_VALUE_CHARS - 2) // 2)) == MAX_VALUE_CHARS
    refused(105, check_value, "\n" * ((MAX_VALUE_CHARS - 2) // 2) + "x")


def test_a_value_sharing_one_list_many_times_is_refused_without_encoding_it() -> None:
    shared = ["x" * 100] * 1000
    for _ in range(40):  # 2**40 copies when encoded
        shared = [shared, shared]
    assert "at least" in refused(105, check_value, shared)


def test_sharing_without_a_cycle_is_fine() -> None:
    item = {"id": 1}
    assert check_value([item, item, {"again": item}]) == roblox_len([item, item, {"again": item}])


# --- refusals name the path ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_not_allowed(bad) -> None:
    message = refused(103, check_value, {"a": [0, bad]})
    assert message.startswith('value["a"][1] ') and repr(bad) in message and "float" in message


def test_the_path_goes_through_dicts_and_lists_and_uses_what_as_root() -> None:
    data = {"inventory": [1, 2, 3, {"name": {1, 2}}]}
    message = refused(104, check_value, data, what="data")
    assert message.startswith('data["inventory"][3]["name"] ') and "set" in message and "{1, 2}" in message


@pytest.mark.parametrize(
    "bad, type_name",
    [({1, 2}, "set"), (frozenset(), "frozenset"), (b"ab", "bytes"), (bytearray(b"ab"), "bytearray"),
     (object(), "object"), (len, "builtin_function_or_method"), (lambda: 0, "function"), (Decimal("1.5"), "Decimal"),
     (1j, "complex"), (range(3), "range"), (collections.deque(), "deque"), (Ellipsis, "ellipsis")],
)
def test_other_types_cannot_be_stored(bad, type_name) -> None:
    message = refused(104, check_value, {"a": [bad]})
    assert message.startswith('value["a"][0] ') and f"({type_name})" in message


def test_a_value_that_is_itself_bad_is_named_by_what() -> None:
    assert refused(104, check_value, b"x", what="stats").startswith("stats is b'x' (bytes)")


def test_found_values_are_shortened() -> None:
    message = refused(104, check_value, [set(range(100_000))])
    assert len(message) < 250 and "set" in message


@pytest.mark.parametrize("key", [1, 1.5, None, True, (1, 2), b"k"])
def test_dict_keys_must_be_strings(key) -> None:
    message = refused(103, check_value, {"outer": {"ok": 1, key: 2}})
    assert message.startswith('value["outer"] has key ') and repr(key) in message and type(key).__name__ in message


def test_long_keys_are_shortened_in_paths() -> None:
    message = refused(103, check_value, {"k" * 1000: [float("nan")]})
    assert message.startswith('value["kkk') and "...\"][0]" in message and len(message) < 250


def test_lone_surrogates_are_not_allowed_in_strings_or_keys() -> None:
    message = refused(103, check_value, {"a": ["ok", "bad\udc80"]})
    assert message.startswith('value["a"][1] ') and "\\udc80" in message and "index 3" in message
    message = refused(103, check_value, {"a": {"k\ud800": 1}})
    assert message.startswith('value["a"] has key') and "\\ud800" in message
    message.encode("utf-8")  # the message itself is printable
    assert check_value("😀") == 3  # a real astral character is fine


@given(st.text(st.characters(categories=["Cs"]), min_size=1), st.text(max_size=5))
def test_any_surrogate_anywhere_is_refused(bad: str, ok: str) -> None:
    refused(103, check_value, [ok + bad + ok])
    refused(103, check_value, {ok + bad: 1})


def test_int64_boundaries() -> None:
    for ok in (INT64_MIN, INT64_MAX, 0):
        assert check_value({"n": ok}) == roblox_len({"n": ok})
        assert decode(encode(ok)) == ok
    for bad in (INT64_MAX + 1, INT64_MIN - 1, 10**100):
        message = refused(104, check_value, {"n": [bad]})
        assert message.startswith('value["n"][0] ') and "64-bit" in message


def test_bools_are_not_ints_and_stay_bools() -> None:
    assert check_value([True, False]) == len("[true,false]")
    assert decode(encode([True, 1])) == [True, 1] and type(decode(encode(True))) is bool


def test_subclasses_of_storable_types_are_stored_as_their_base() -> None:
    class Colour(enum.IntEnum):
        RED = 1

    Point = collections.namedtuple("Point", "x y")
    value = collections.OrderedDict(colour=Colour.RED, at=Point(1, 2), tags=collections.defaultdict(list, a=[1]))
    assert check_value(value) == len('{"colour":1,"at":[1,2],"tags":{"a":[1]}}')
    assert decode(encode(value)) == {"colour": 1, "at": [1, 2], "tags": {"a": [1]}}


# --- cycles and depth ---------------------------------------------------------------------------------------------


def test_a_list_containing_itself_is_a_cycle() -> None:
    loop: list = [1]
    loop.append(loop)
    message = refused(104, check_value, loop)
    assert message.startswith("value[1] is a cycle") and "same list as value," in message


def test_a_cycle_deeper_down_names_both_places() -> None:
    inner: dict = {"x": 1}
    inner["back"] = [inner]
    message = refused(104, check_value, {"a": inner})
    assert message.startswith('value["a"]["back"][0] is a cycle') and 'same dict as value["a"],' in message


def test_nesting_up_to_max_depth_is_stored_and_deeper_is_refused() -> None:
    deepest = nested_lists(MAX_DEPTH)
    assert check_value(deepest) == 2 * MAX_DEPTH + 1
    assert decode(encode(deepest)) == deepest and canonical(deepest) == canonical(decode(encode(deepest)))
    message = refused(104, check_value, nested_lists(MAX_DEPTH + 1))
    assert str(MAX_DEPTH) in message and "deep" in message


@pytest.mark.parametrize("depth", [MAX_DEPTH * 4, 100_000])
def test_very_deep_nesting_is_refused_without_recursion_error(depth) -> None:
    deep: dict = {}
    for _ in range(depth):
        deep = {"k": deep}
    message = refused(104, check_value, deep)
    assert f"more than {MAX_DEPTH} deep" in message and "more)" in message and len(message) < 400


def test_a_call_from_a_nearly_full_stack_refuses_instead_of_raising_recursion_error() -> None:
    def frames() -> int:
        f, n = sys._getframe(), 0
        while f is not None:
            f, n = f.f_back, n + 1
        return n

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(frames() + 60)
    try:
        message = refused(104, check_value, nested_lists(MAX_DEPTH))
        refused(104, canonical, nested_lists(MAX_DEPTH))
    finally:
        sys.setrecursionlimit(old)
    assert "too deeply" in message


# --- encodings ----------------------------------------------------------------------------------------------------


def test_roundtrip_turns_tuples_into_lists() -> None:
    value = {"pos": (1.5, -2, 0.0), "list": [(), ("a", (None,))], "s": "金币"}
    assert decode(encode(value)) == {"pos": [1.5, -2, 0.0], "list": [[], ["a", [None]]], "s": "金币"}


def test_decode_refuses_extension_types_instead_of_building_objects() -> None:
    data = msgpack.packb([1, msgpack.ExtType(42, b"payload")])
    message = refused(501, decode, data)
    assert "extension type 42" in message


@pytest.mark.parametrize(
    "data", [b"", b"\x92\x01", b"\x01\x02", b"\xc1", msgpack.packb({1: 2}), b"\xa2\xff\xfe"]
)
def test_undecodable_bytes_are_corrupted_data(data) -> None:
    refused(501, decode, data)


def test_encode_refuses_what_msgpack_cannot_pack() -> None:
    refused(104, encode, {"a": {1, 2}})
    refused(104, encode, "bad\udc80")


def test_canonical_ignores_dict_order_and_tuple_vs_list() -> None:
    a = {"b": [1, {"y": 2, "x": "é"}], "a": (None, True)}
    b = {"a": [None, True], "b": [1, {"x": "é", "y": 2}]}
    assert canonical(a) == canonical(b) == '{"a":[null,true],"b":[1,{"x":"é","y":2}]}'.encode()


def test_canonical_treats_whole_floats_as_the_integers_they_equal() -> None:
    assert canonical({"n": 1.0}) == canonical({"n": 1}) == b'{"n":1}'
    assert canonical(-0.0) == canonical(0) == b"0"
    assert canonical(1e20) == canonical(10**20)
    assert canonical(1.5) != canonical(1) and canonical(1.5) == b"1.5"
    assert canonical(True) != canonical(1) and canonical(None) != canonical(0)
    assert canonical([2**53 + 1]) != canonical([float(2**53)])  # different numbers, as for ==


# --- names and keys -----------------------------------------------------------------------------------------------


def test_store_names_are_1_to_50_characters() -> None:
    assert check_store_name("n" * 50) == "n" * 50
    message = refused(0, check_store_name, "n" * 51)
    assert "51" in message and "50" in message and message.startswith("data store name")
    refused(0, check_store_name, "")
    assert "int" in refused(0, check_store_name, 5)
    assert "surrogate" in refused(0, check_store_name, "a\udc80")
    assert check_store_name("a/b") == "a/b"
    with pytest.raises(DataStoreError) as info:
        check_store_name("")
    assert info.value.name == "InvalidName" and not info.value.retryable


def test_scopes_are_1_to_50_characters_without_a_slash() -> None:
    assert check_scope() == check_scope(None) == "global"
    assert check_scope("s" * 50) == "s" * 50
    assert refused(0, check_scope, "s" * 51).startswith("scope")
    refused(0, check_scope, "")
    assert "'/'" in refused(0, check_scope, "a/b")
    assert "'/'" in refused(0, check_store_name, "a/b", what="scope")
    assert "NoneType" in refused(0, check_store_name, None, what="scope")


def test_keys_are_1_to_50_characters() -> None:
    assert check_key("k" * 50) == "k" * 50
    with pytest.raises(DataStoreError) as info:
        check_key("k" * 51)
    assert (info.value.code, info.value.name) == (102, "KeyNameLimit")
    assert "kkkk" in info.value.message and "51 characters" in info.value.message
    assert refused(101, check_key, "") == "key is empty; it must be 1 to 50 characters"
    assert "int" in refused(101, check_key, 12345) and "12345" in refused(101, check_key, 12345)
    assert "NoneType" in refused(101, check_key, None)
    assert "surrogate" in refused(102, check_key, "player_\udc80")
    assert len(refused(102, check_key, "k" * 10_000)) < 200


# --- user ids, metadata, page sizes -------------------------------------------------------------------------------


def test_user_ids() -> None:
    assert check_user_ids(None) == ()
    assert check_user_ids([]) == ()
    assert check_user_ids([1, 2, 3, 4]) == (1, 2, 3, 4)
    assert check_user_ids((-1, 0, INT64_MAX, 5.0)) == (-1, 0, INT64_MAX, 5)
    assert type(check_user_ids([5.0])[0]) is int
    message = refused(512, check_user_ids, [1, 2, 3, 4, 5])
    assert "5 user ids" in message and str(MAX_USER_IDS) in message


@pytest.mark.parametrize("bad", ["123", True, 1.5, None, [1], INT64_MAX + 1, float("nan")])
def test_user_ids_must_be_integers(bad) -> None:
    message = refused(513, check_user_ids, [7, bad])
    assert message.startswith("user_ids[1] is ") and type(bad).__name__ in message


@pytest.mark.parametrize("bad", [5, "12", {1, 2}, {"a": 1}])
def test_user_ids_must_be_a_list_or_tuple(bad) -> None:
    assert type(bad).__name__ in refused(513, check_user_ids, bad)


def test_metadata_basics() -> None:
    assert check_metadata(None) == {}
    original = {"a": "x", "n": 1, "f": 1.5, "b": False}
    copy = check_metadata(original)
    assert copy == original and copy is not original


def test_metadata_key_length() -> None:
    assert check_metadata({"k" * MAX_METADATA_KEY: 1})
    message = refused(511, check_metadata, {"k" * (MAX_METADATA_KEY + 1): 1})
    assert "kkkk" in message and "51 characters" in message


def test_metadata_value_length_counts_its_json() -> None:
    assert check_metadata({"a": "v" * (MAX_METADATA_VALUE - 2)})  # plus 2 quotes
    message = refused(511, check_metadata, {"a": "v" * (MAX_METADATA_VALUE - 1)})
    assert message.startswith('metadata["a"] is 251 characters') and "250" in message


def test_metadata_total_length() -> None:
    def of_total(total: int) -> dict:
        meta = {"a": "v" * 200, "b": ""}
        meta["b"] = "v" * (total - roblox_len(meta))
        assert roblox_len(meta) == total
        return meta

    assert check_metadata(of_total(MAX_METADATA_TOTAL))
    message = refused(511, check_metadata, of_total(MAX_METADATA_TOTAL + 1))
    assert "301 characters" in message and "300" in message


@pytest.mark.parametrize(
    "meta, found",
    [({"a": None}, "NoneType"), ({"a": [1]}, "list"), ({"a": {}}, "dict"), ({1: "x"}, "int"),
     ({"a": float("nan")}, "nan"), ({"a": "x\udc80"}, "surrogate"), ({"k\udc80": 1}, "surrogate"),
     ({"a": 2**64}, "64-bit"), ([("a", 1)], "list")],
)
def test_metadata_refusals(meta, found) -> None:
    assert found in refused(511, check_metadata, meta)


def test_page_sizes() -> None:
    def page(n):
        return check_page_size(n, default=LIST_KEYS_DEFAULT_PAGE, maximum=MAX_LIST_PAGE)

    assert page(0) == LIST_KEYS_DEFAULT_PAGE
    assert page(1) == 1 and page(MAX_LIST_PAGE) == MAX_LIST_PAGE
    for bad in (MAX_LIST_PAGE + 1, -1):
        assert str(bad) in refused(106, page, bad)
    for bad, type_name in ((True, "bool"), (1.0, "float"), ("5", "str"), (None, "NoneType")):
        assert type_name in refused(106, page, bad)


# --- properties ---------------------------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(INT64_MIN, INT64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5)
    | st.lists(inner, max_size=5).map(tuple)
    | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=25,
)


def reversed_dicts(v):
    if isinstance(v, dict):
        return {k: reversed_dicts(v[k]) for k in reversed(list(v))}
    if isinstance(v, (list, tuple)):
        return [reversed_dicts(x) for x in v]
    return v


@settings(max_examples=300, deadline=None)
@given(json_like)
def test_storable_values_are_measured_like_roblox_and_roundtrip(value) -> None:
    assert check_value(value) == roblox_len(value)
    back = decode(encode(value))
    assert repr(back) == repr(as_lists(value))  # types too: bool stays bool, -0.0 stays -0.0
    assert canonical(back) == canonical(value) == canonical(reversed_dicts(value))

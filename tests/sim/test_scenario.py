"""The scenario model: defaults, the example files, refusal of bad input with dotted paths, fault windows."""

from __future__ import annotations

from pathlib import Path

import pytest

from lodestore.sim._scenario import (
    ActionRates, FaultWindow, HotKeys, LatencyRange, LatencySection, Players, Scenario, Servers, StoreSection,
    WorldSection, datastore_latency, load_scenario, memorystore_latency, parse_scenario,
)
from lodestore.storage import ConfigError, Latency, RequestType

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "scenarios").glob("*.toml"))


def test_empty_text_gives_documented_defaults():
    s = parse_scenario("")
    assert s.source == "<string>"
    assert s.world == WorldSection(name="sim", backend="sqlite", path=None, time_scale=None, duration=600, seed=1,
                            budget="current", placement="per-server", shards=1)
    assert s.servers == Servers(count=4, max_players=50, start_rate=0, stop_rate=0, crash_rate=0,
                                shutdown_window=30, step=1)
    assert s.players == Players(population=100, join_rate=0.1, leave_rate=0.01, teleport_rate=0,
                                actions_per_minute=ActionRates(coins=6, grant_item=1, purchase=0.2, trade=0.5,
                                                               hot_key=0))
    assert s.store == StoreSection(name="players", template={"coins": 100, "items": []}, migrations=(),
                            autosave_interval=300, lock_ttl=90, lock_refresh=60)
    assert s.hot_keys == HotKeys(count=0, kinds=("counter",))
    assert s.faults == ()
    assert s == Scenario()


def test_values_are_read():
    s = parse_scenario("""
        [world]
        backend = "memory"
        path = "data/x.db"
        shards = 64
        [players.actions_per_minute]
        trade = 3
        [store]
        template = { coins = 5, items = ["a"], meta = { level = 2 } }
        migrations = ["v1", "v2"]
        [hot_keys]
        count = 2
        kinds = ["guild"]
        [[faults]]
        start = 0
        end = 10
        latency_ms = { min = 5, max = 5 }
        error_rate = { OrderedList = 1 }
    """, "mine.toml")
    assert s.source == "mine.toml"
    assert (s.world.backend, s.world.path, s.world.shards) == ("memory", "data/x.db", 64)
    assert s.players.actions_per_minute.trade == 3.0
    assert s.players.actions_per_minute.coins == 6.0
    assert s.store.template == {"coins": 5, "items": ["a"], "meta": {"level": 2}}
    assert s.store.migrations == ("v1", "v2")
    assert s.hot_keys == HotKeys(count=2, kinds=("guild",))
    assert s.faults == (FaultWindow(start=0, end=10, latency_ms=LatencyRange(5, 5), error_rate={"OrderedList": 1.0}),)


READS = ("StandardRead", "StandardList", "OrderedRead", "OrderedList")


def test_latency_defaults_are_roughly_roblox_s_service_times():
    s = parse_scenario("")
    assert s.latency.hop_ms == 50
    ds = datastore_latency(s)
    assert set(ds) == {t.value for t in RequestType}          # every request type has a service time
    for name, latency in ds.items():
        assert latency == Latency.lognormal(60 if name in READS else 120, 0.5, max_ms=10_000), name
    assert memorystore_latency(s) == Latency.uniform(0, 10, max_ms=10_000)
    assert s.latency == LatencySection() and parse_scenario("[latency]") == s


def test_latency_reads_every_shape_and_fills_the_rest_from_default():
    s = parse_scenario("""
        [latency]
        hop_ms = 20
        [latency.datastore]
        default = {median = 80, sigma = 0.25}
        StandardWrite = {min = 50, max = 200}
        StandardRemove = {fixed = 80}
        RemoveVersion = {fixed = 30000}
        [latency.memorystore]
        default = {fixed = 2}
    """)
    assert s.latency.hop_ms == 20
    ds = datastore_latency(s)
    assert ds["StandardWrite"] == Latency.uniform(50, 200, max_ms=10_000)
    assert ds["StandardRemove"] == Latency.fixed(80, max_ms=10_000)
    assert ds["RemoveVersion"] == Latency.fixed(30_000, max_ms=30_000)     # a longer latency is its own cap
    for name in set(ds) - {"StandardWrite", "StandardRemove", "RemoveVersion"}:
        assert ds[name] == Latency.lognormal(80, 0.25, max_ms=10_000), name
    assert memorystore_latency(s) == Latency.fixed(2, max_ms=10_000)


def test_latency_without_a_default_keeps_the_built_in_ones():
    ds = datastore_latency(parse_scenario("[latency.datastore]\nStandardRead = {fixed = 5}"))
    assert ds["StandardRead"] == Latency.fixed(5, max_ms=10_000)
    assert ds["OrderedRead"].a == 60 and ds["StandardWrite"].a == 120


def test_a_long_lognormal_is_not_capped_at_its_median():
    ds = datastore_latency(parse_scenario("[latency.datastore]\nStandardRead = {median = 20000, sigma = 1}"))
    assert ds["StandardRead"].sample(0.9) > 20_000


def test_default_template_is_not_shared():
    a, b = parse_scenario(""), parse_scenario("")
    a.store.template["items"].append("x")
    assert b.store.template == {"coins": 100, "items": []}


def test_there_are_example_files():
    names = {p.name for p in EXAMPLES}
    assert {"quickstart.toml", "lyra_chaos.toml", "trading_storm.toml", "teleport_storm.toml", "hot_keys.toml",
            "outage.toml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads(path):
    s = load_scenario(path)
    assert s.source == str(path)
    assert path.read_text().startswith("#"), "each example starts with a comment saying what it shows"


def test_example_specifics():
    by = {p.name: load_scenario(p) for p in EXAMPLES}
    q = by["quickstart.toml"]
    assert (q.servers.count, q.players.population, q.world.duration, q.world.time_scale) == (4, 60, 300, None)
    lyra = by["lyra_chaos.toml"]
    assert (lyra.players.join_rate, lyra.players.leave_rate) == (0.1, 0.01)
    assert (lyra.servers.stop_rate, lyra.servers.crash_rate, lyra.world.duration) == (0.005, 0.001, 21600)
    assert by["hot_keys.toml"].hot_keys.count > 0 and by["hot_keys.toml"].players.actions_per_minute.hot_key > 0
    assert any(w.outage for w in by["outage.toml"].faults)
    assert any(w.error_rate for w in by["outage.toml"].faults)
    assert by["teleport_storm.toml"].players.teleport_rate > 0.1
    assert by["trading_storm.toml"].players.actions_per_minute.trade > 5


FAULT = "[[faults]]\nstart = 0\nend = 10\n"

BAD = [
    # (id, toml, substrings the message must contain)
    ("unknown-section", "[wrld]\nname = 'x'", ["wrld", "unknown section", "world", "hot_keys", "faults"]),
    ("unknown-key", "[world]\ncolour = 'red'", ["world.colour", "unknown key", "backend", "time_scale"]),
    ("unknown-apm-key", "[players.actions_per_minute]\ndance = 1",
     ["players.actions_per_minute.dance", "coins", "hot_key"]),
    ("section-not-table", "world = 3", ["world", "must be a table", "got 3"]),
    ("string-for-number", "[world]\ntime_scale = 'fast'", ["world.time_scale", "must be a number", "'fast'"]),
    ("float-for-int", "[servers]\ncount = 4.0", ["servers.count", "integer", "4.0"]),
    ("bool-as-int", "[servers]\ncount = true", ["servers.count", "integer", "True"]),
    ("bool-as-number", "[players]\njoin_rate = true", ["players.join_rate", "must be a number", "True"]),
    ("bool-as-seed", "[world]\nseed = false", ["world.seed", "integer", "False"]),
    ("nan", "[world]\nduration = nan", ["world.duration", "finite", "nan"]),
    ("inf", "[servers]\nstep = inf", ["servers.step", "finite", "inf"]),
    ("negative-action-rate", "[players.actions_per_minute]\ntrade = -1",
     ["players.actions_per_minute.trade: must be a number >= 0, got -1"]),
    ("probability-above-1", "[servers]\ncrash_rate = 1.5", ["servers.crash_rate", "0..1", "1.5"]),
    ("negative-probability", "[players]\nteleport_rate = -0.1", ["players.teleport_rate", "-0.1"]),
    ("zero-time-scale", "[world]\ntime_scale = 0", ["world.time_scale", "> 0", "got 0"]),
    ("count-zero", "[servers]\ncount = 0", ["servers.count", ">= 1", "got 0"]),
    ("shards-too-many", "[world]\nshards = 65", ["world.shards", "1..64", "65"]),
    ("bad-backend", "[world]\nbackend = 'postgres'", ["world.backend", "'sqlite'", "'memory'", "'postgres'"]),
    ("bad-budget", "[world]\nbudget = 'unlimited'", ["world.budget", "'legacy'", "'unlimited'"]),
    ("bad-placement", "[world]\nplacement = 'random'", ["world.placement", "'per-key'", "'random'"]),
    ("bad-hot-key-kind", "[hot_keys]\ncount = 1\nkinds = ['guild', 'leaderboard']",
     ["hot_keys.kinds[1]", "'leaderboard'"]),
    ("empty-kinds", "[hot_keys]\nkinds = []", ["hot_keys.kinds", "non-empty"]),
    ("hot-key-without-keys", "[players.actions_per_minute]\nhot_key = 1",
     ["players.actions_per_minute.hot_key", "hot_keys.count"]),
    ("lock-refresh-ge-ttl", "[store]\nlock_ttl = 60\nlock_refresh = 60", ["store.lock_refresh", "store.lock_ttl"]),
    ("template-not-table", "[store]\ntemplate = 3", ["store.template", "must be a table"]),
    ("template-datetime", "[store]\ntemplate = { born = 1979-05-27 }", ["store.template.born", "date"]),
    ("migrations-not-strings", "[store]\nmigrations = [1]", ["store.migrations[0]", "got 1"]),
    ("faults-single-table", "[faults]\nstart = 0\nend = 1", ["faults", "array of tables"]),
    ("fault-start-ge-end", "[[faults]]\nstart = 10\nend = 10\noutage = true", ["faults[0].start", "faults[0].end"]),
    ("fault-missing-end", "[[faults]]\nstart = 1\noutage = true", ["faults[0].end", "required"]),
    ("fault-after-duration", "[[faults]]\nstart = 600\nend = 700\noutage = true",
     ["faults[0].start", "world.duration"]),
    ("fault-unknown-key", FAULT + "outage = true\nblackout = true", ["faults[0].blackout", "lock_stall_rate"]),
    ("fault-unknown-request-type", FAULT + "error_rate = { StandardReed = 0.5 }",
     ["faults[0].error_rate.StandardReed", "unknown request type", "StandardRead", "OrderedList"]),
    ("fault-error-rate-above-1", FAULT + "error_rate = { StandardWrite = 2 }",
     ["faults[0].error_rate.StandardWrite", "got 2"]),
    ("latency-min-gt-max", FAULT + "latency_ms = { min = 500, max = 100 }",
     ["faults[0].latency_ms.min", "faults[0].latency_ms.max", "500"]),
    ("latency-unknown-key", FAULT + "latency_ms = { min = 1, max = 2, mean = 1 }", ["faults[0].latency_ms.mean"]),
    ("outage-not-bool", FAULT + "outage = 1", ["faults[0].outage", "boolean", "got 1"]),
    ("second-fault-bad", FAULT + "outage = true\n" + FAULT + "lock_stall_rate = 7",
     ["faults[1].lock_stall_rate", "got 7"]),
    ("empty-fault", FAULT, ["faults[0]", "sets no fault"]),
    ("syntax-error", "[world]\nname = 'ok'\nduration = = 3\n", ["<string>", "invalid TOML", "line 3"]),
    # issue 18: what passed the validator and failed later, after Ray had started (or never ended)
    ("world-name-path", "[world]\nname = 'x/../../../../escaped'", ["world.name", "letters, digits", "escaped"]),
    ("world-name-dots", "[world]\nname = '..'", ["world.name", "not starting with '.'"]),
    ("world-name-long", f"[world]\nname = '{'w' * 41}'", ["world.name", "1-40"]),
    ("store-name-long", f"[store]\nname = '{'s' * 33}'", ["store.name", "32"]),
    ("template-too-big", f"[store]\ntemplate = {{ big = '{'x' * 4_200_000}' }}", ["store.template", "4194304"]),
    ("template-too-deep", "[store]\ntemplate = { d = " + "{ a = " * 300 + "1" + " }" * 300 + " }",
     ["store.template", "deep"]),
    ("lock-ttl-over-45-days", "[store]\nlock_ttl = 4000000", ["store.lock_ttl", "3888000"]),
    ("autosave-sub-ms", "[store]\nautosave_interval = 1e-9", ["store.autosave_interval", "0.1"]),
    ("lock-refresh-sub-ms", "[store]\nlock_refresh = 1e-4", ["store.lock_refresh", "0.1"]),
    ("template-coins-not-int", "[store]\ntemplate = { coins = 'many' }", ["store.template.coins", "integer"]),
    ("template-items-not-list", "[store]\ntemplate = { items = 3 }", ["store.template.items", "array"]),
    ("step-sub-ms", "[servers]\nstep = 1e-9", ["servers.step", ">= 0.1", "1e-09"]),
    ("population-huge", "[players]\npopulation = 1000000000", ["players.population", "at most 1,000,000"]),
    ("servers-huge", "[servers]\ncount = 1000000", ["servers.count", "at most 10,000"]),
    ("server-size-huge", "[servers]\nmax_players = 701", ["servers.max_players", "700"]),
    ("bind-to-close-long", "[servers]\nshutdown_window = 31", ["servers.shutdown_window", "at most 30"]),
    ("hot-keys-huge", "[hot_keys]\ncount = 10000000", ["hot_keys.count", "at most 10,000"]),
    ("action-rate-huge", "[players.actions_per_minute]\ncoins = 1e9", ["players.actions_per_minute.coins", "600"]),
    ("actions-in-total-huge", "[players]\npopulation = 1000000\n[players.actions_per_minute]\ncoins = 100",
     ["players.actions_per_minute", "10,000,000", "actions"]),
    ("duration-huge", "[world]\nduration = 1e12", ["world.duration", "at most 2,592,000"]),
    ("steps-too-many", "[world]\nduration = 2592000\n[servers]\nstep = 0.5", ["servers.step", "at most 2,000,000", "steps"]),
    ("latency-huge", FAULT + "latency_ms = { min = 0, max = 1e9 }", ["faults[0].latency_ms.max", "600,000"]),
    ("faults-too-many", FAULT * 1001 + "outage = true", ["faults", "at most 1,000"]),
    # [latency]
    ("latency-not-table", "latency = 3", ["latency", "must be a table", "got 3"]),
    ("latency-unknown-key", "[latency]\nhop = 5", ["latency.hop", "unknown key", "datastore", "hop_ms", "memorystore"]),
    ("hop-zero", "[latency]\nhop_ms = 0", ["latency.hop_ms", ">= 1", "got 0"]),
    ("hop-huge", "[latency]\nhop_ms = 10001", ["latency.hop_ms", "at most 10,000", "10001"]),
    ("hop-string", "[latency]\nhop_ms = '50'", ["latency.hop_ms", "must be a number", "'50'"]),
    ("hop-bool", "[latency]\nhop_ms = true", ["latency.hop_ms", "must be a number", "True"]),
    ("hop-nan", "[latency]\nhop_ms = nan", ["latency.hop_ms", "finite", "nan"]),
    ("ds-latency-negative", "[latency.datastore]\nStandardWrite = {median = -1, sigma = 0.5}",
     ["latency.datastore.StandardWrite.median: must be a number >= 0, got -1"]),
    ("ds-latency-nan", "[latency.datastore]\nStandardRead = {fixed = nan}",
     ["latency.datastore.StandardRead.fixed", "finite", "nan"]),
    ("ds-latency-inf", "[latency.datastore]\ndefault = {min = 0, max = inf}",
     ["latency.datastore.default.max", "finite", "inf"]),
    ("ds-latency-huge", "[latency.datastore]\nStandardRead = {fixed = 600001}",
     ["latency.datastore.StandardRead.fixed", "at most 600,000", "600001"]),
    ("ds-latency-two-shapes", "[latency.datastore]\nStandardRead = {fixed = 5, min = 1, max = 9}",
     ["latency.datastore.StandardRead", "exactly one shape", "{fixed}", "{min, max}", "{median, sigma}",
      "fixed, max, min"]),
    ("ds-latency-no-shape", "[latency.datastore]\nStandardRead = {}",
     ["latency.datastore.StandardRead", "exactly one shape", "empty"]),
    ("ds-latency-half-shape", "[latency.datastore]\nStandardRead = {min = 1}",
     ["latency.datastore.StandardRead.max", "required", "min"]),
    ("ds-latency-median-alone", "[latency.datastore]\nStandardRead = {median = 60}",
     ["latency.datastore.StandardRead.sigma", "required", "median"]),
    ("ds-latency-min-gt-max", "[latency.datastore]\nStandardWrite = {min = 300, max = 200}",
     ["latency.datastore.StandardWrite.min", "latency.datastore.StandardWrite.max", "300"]),
    ("ds-latency-sigma-high", "[latency.datastore]\nStandardWrite = {median = 60, sigma = 3.5}",
     ["latency.datastore.StandardWrite.sigma", "0..3", "3.5"]),
    ("ds-latency-unknown-shape-key", "[latency.datastore]\nStandardWrite = {mean = 60}",
     ["latency.datastore.StandardWrite.mean", "unknown key", "fixed", "median", "sigma"]),
    ("ds-latency-unknown-type", "[latency.datastore]\nGetAsync = {fixed = 5}",
     ["latency.datastore.GetAsync", "unknown request type", "default", "StandardRead", "RemoveVersion"]),
    ("ds-latency-not-table", "[latency.datastore]\nStandardRead = 60",
     ["latency.datastore.StandardRead", "must be a table", "got 60"]),
    ("ds-latency-string", "[latency.datastore]\nStandardRead = {fixed = '60'}",
     ["latency.datastore.StandardRead.fixed", "must be a number", "'60'"]),
    ("ds-section-not-table", "[latency]\ndatastore = 60", ["latency.datastore", "must be a table"]),
    ("ms-latency-request-type", "[latency.memorystore]\nStandardRead = {fixed = 5}",
     ["latency.memorystore.StandardRead", "unknown key", "default"]),
    ("ms-latency-bad", "[latency.memorystore]\ndefault = {min = -1, max = 10}",
     ["latency.memorystore.default.min", ">= 0", "-1"]),
    ("messaging-unknown-key", "[messaging]\nlatency = {fixed = 5}", ["messaging.latency", "unknown key", "delay"]),
    ("messaging-drop-rate", "[messaging]\ndrop_rate = 1.5", ["messaging.drop_rate", "1.5"]),
    ("messaging-delay-shape", "[messaging]\ndelay = {min = 3000, max = 1000}", ["messaging.delay.min", "<="]),
    ("messaging-delay-number", "[messaging]\ndelay = 1500", ["messaging.delay", "must be a table"]),
]


@pytest.mark.parametrize("text, expected", [(t, e) for _, t, e in BAD], ids=[i for i, _, _ in BAD])
def test_bad_input_is_refused_with_the_field_path(text, expected):
    with pytest.raises(ConfigError) as info:
        parse_scenario(text)
    message = str(info.value)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_errors_name_the_source_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[servers]\n\ncount = 'four'\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: servers\.count: must be an integer, got 'four' \(str\)"):
        load_scenario(p)
    p.write_text("[servers\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML: .*line 1"):
        load_scenario(p)
    with pytest.raises(ConfigError, match="missing.toml"):
        load_scenario(tmp_path / "missing.toml")


def test_faults_at_picks_the_active_windows():
    s = parse_scenario("""
        [world]
        duration = 1000
        [[faults]]
        start = 0
        end = 100
        outage = true
        [[faults]]
        start = 50
        end = 200
        server_crash_rate = 0.5
        [[faults]]
        start = 300
        end = 400
        ambiguous_write_rate = 0.1
    """)
    a, b, c = s.faults
    assert s.faults_at(0) == [a]
    assert s.faults_at(49.9) == [a]
    assert s.faults_at(50) == [a, b]
    assert s.faults_at(99.999) == [a, b]
    assert s.faults_at(100) == [b]
    assert s.faults_at(200) == []
    assert s.faults_at(300) == [c]
    assert s.faults_at(400) == []
    assert s.faults_at(-1) == []
    assert parse_scenario("").faults_at(10) == []


def test_messaging_delivery_defaults_to_1_to_2_s_and_reaches_the_world_s_faults():
    from lodestore.sim._runner import fault_config_at
    from lodestore.sim._scenario import scenario_toml

    default = parse_scenario("").messaging
    assert default.delay == Latency.uniform(1000, 2000, max_ms=10_000) and default.drop_rate == 0.0
    s = parse_scenario("""
        [messaging]
        delay = {median = 800, sigma = 0.5}
        drop_rate = 0.25
        [[faults]]
        start = 0
        end = 10
        outage = true
    """)
    assert s.messaging.delay == Latency.lognormal(800, 0.5, max_ms=10_000) and s.messaging.drop_rate == 0.25
    assert parse_scenario(scenario_toml(s)).messaging == s.messaging
    for t in (5, 50):                     # inside and outside the fault window: the model holds the whole run
        faults = fault_config_at(s, t, 0)
        assert faults.messaging_delay == s.messaging.delay and faults.messaging_drop_rate == 0.25

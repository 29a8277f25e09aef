"""Running a scenario: build the world, play the plan on simulated game servers, check the outcome, report.

Owns: `simulate(scenario, options)`, the driver of `lodestore simulate`, and its engine. The world runs in virtual time
(`storage.virtual`): one *cloud* node holds the storage (DataStore shards, MemoryStore, budget ledger) and the
coordinator, and each of `hosts` nodes holds game servers. On Ray ("ray", the default) each host node is a Ray actor
spread over the cluster and the cloud node runs in the driver, beside the world file; "in-process" makes the same nodes
in this process and steps them one after another: the same engine, not a second code path. The driver moves the nodes
round by round: the hosts through a window of two `latency.hop_ms`, then the cloud through its window shifted by a hop
(no message between nodes is faster than a hop, so none is ever late), hands the hosts the plan's events, drains what
they recorded every few simulated seconds and skips idle stretches. Simulated time never comes from the wall clock: a
run is a function of its scenario, seed and host count, on Ray as in one process, whatever the machine's load (the
report's `digest` says so). `world.time_scale` only paces a run to wall time for someone watching live.

The event sequence is the planner's, a function of the scenario and its seed, or a given list (`RunOptions.events`,
played by a `Script` with the planner's interface: `lodestore shrink` and the replay of its output). At the end (or
on Ctrl-C) every server still up runs BindToClose, the final data of every player is read from storage, the checkers
run, and the report is written; `RunOptions.until` stops the play at a simulated time instead and leaves the world
file as it was then.

Never does: choose events (the planner), execute them (the hosts) or render the report (`sim._report`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

from lodestore.coordinator import COORDINATOR_NAME, CoordinatorActor
from lodestore.sim._checkers import CheckResult
from lodestore.sim._collect import Collector
from lodestore.sim._host import RELAY, HostRole, Relay, since_start
from lodestore.sim._metrics import check_thresholds, metrics
from lodestore.sim._outside import outside_writes
from lodestore.sim._report import summary_table, write_report
from lodestore.sim._scenario import (Scenario, datastore_latency, design_summary, memorystore_latency,
                                     scenario_toml, store_config)
from lodestore.sim._timeline import TimelineError, write_timelines
from lodestore.sim._workload import Planned, Planner, Script, events_to_json, player_key
from lodestore.sim.designs import design
from lodestore.storage import (ACTOR_FAILURES, MEMORYSTORE_FAULT_KEYS, MEMORYSTORE_NAME, MESSAGING_NAME, ConfigError,
                               FaultConfig, Latency, ManualClock, Outage, StorageUsage, datastore_name, virtual)

__all__ = ["RunOptions", "RunResult", "simulate", "fault_config_at", "history_digest"]


@dataclass(frozen=True)
class RunOptions:
    """How to run a scenario (the command line's options)."""

    out: Path | None = None            # report directory; default lodestore-runs/<timestamp>-<name>
    engine: str = "ray"                # "ray" | "in-process"
    address: str | None = None         # a Ray cluster to join ("auto"); None starts local Ray when needed
    hosts: int | None = None           # simulator host nodes (default: 2, at most one per initial server)
    progress: bool | None = None       # live display; None: only on a terminal
    write_files: bool = True
    stream: TextIO | None = None       # where progress and the summary go (default stdout)
    until: float | None = None         # stop the play at this simulated second: no BindToClose, no checks, no
                                       # report; the world file is left as it was then (`lodestore replay --until`)
    dashboard: bool = False            # start local Ray with its dashboard on 127.0.0.1 (and say its URL)
    stop: threading.Event | None = None   # set it to stop the play as a Ctrl-C does (BindToClose, checks, report)
    events: tuple[Planned, ...] | None = None   # play these events instead of the planner's (`Script`: what is
                                       # `playable` of them); the run writes them to events.json (`lodestore shrink`)

    def __post_init__(self) -> None:
        if self.engine not in ("ray", "in-process"):
            raise ConfigError(f"engine must be 'ray' or 'in-process', got {self.engine!r}")
        if self.hosts is not None and (isinstance(self.hosts, bool) or not isinstance(self.hosts, int)
                                       or not 1 <= self.hosts <= 64):
            raise ConfigError(f"hosts must be an int from 1 to 64, got {self.hosts!r}")
        if not isinstance(self.dashboard, bool):
            raise ConfigError(f"dashboard must be true or false, got {self.dashboard!r}", field="dashboard")
        if self.dashboard and (self.engine != "ray" or self.address is not None):
            raise ConfigError("--dashboard starts local Ray with its dashboard: it needs the Ray engine without "
                              "--in-process, and a cluster (--address) has its own dashboard", field="dashboard")
        if self.stop is not None and not isinstance(self.stop, threading.Event):
            raise ConfigError(f"stop must be a threading.Event, got {self.stop!r}", field="stop")
        if self.events is not None and (not isinstance(self.events, tuple)
                                        or not all(isinstance(ev, Planned) for ev in self.events)):
            raise ConfigError(f"events must be a tuple of Planned events, got {type(self.events).__name__}",
                              field="events")
        if self.until is not None and (isinstance(self.until, bool) or not isinstance(self.until, (int, float))
                                       or not math.isfinite(self.until) or self.until < 0):
            raise ConfigError(f"until must be a number of simulated seconds >= 0, got {self.until!r}")


@dataclass
class RunResult:
    report: dict
    checks: list[CheckResult]
    history: Any
    out: Path | None
    files: dict

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def thresholds_ok(self) -> bool:
        """Every `[thresholds]` bound of the scenario held (True when it sets none)."""
        return all(t["ok"] for t in self.report.get("thresholds", ()))

    @property
    def exit_status(self) -> int:
        """0: every checker passed; 1: one failed, or a `[thresholds]` bound did not hold; 3: inconclusive (the
        checks passed, but the harness could not keep up: see `report["health"]`); 130: stopped early by Ctrl-C
        (and no checker failed)."""
        if not self.ok or not self.thresholds_ok:
            return 1
        if self.report["run"]["stopped_early"]:
            return 130
        return 0 if self.report["verdict"] == "pass" else 3


def fault_config_at(scenario: Scenario, t_s: float, t0: int) -> FaultConfig:
    """The storage faults of every window active at simulated second `t_s`, with all outage windows (absolute ms),
    on top of the scenario's modelled service times (`[latency]`); a window's MemoryStore rates (and its
    `memorystore_outage`, a rate of 1 for every structure kind) combine the same way."""
    windows = scenario.faults_at(t_s)
    rates: dict[str, float] = {}
    for w in windows:
        for rtype, p in w.error_rate.items():
            rates[rtype] = 1 - (1 - rates.get(rtype, 0.0)) * (1 - p)
    latency = {}
    spans = [w.latency_ms for w in windows if w.latency_ms is not None]
    if spans:
        lo, hi = max(s.min for s in spans), max(s.max for s in spans)
        from lodestore.storage import RequestType
        latency = {r.value: Latency.uniform(lo, hi) for r in RequestType}
    ambiguous = 1 - math.prod(1 - w.ambiguous_write_rate for w in windows)
    outages = tuple(Outage(t0 + int(w.start * 1000), t0 + int(w.end * 1000)) for w in scenario.faults if w.outage)
    ms_rates: dict[str, float] = {}
    for w in windows:
        for key, p in w.memorystore_error_rate.items():
            ms_rates[key] = 1 - (1 - ms_rates.get(key, 0.0)) * (1 - p)
    if any(w.memorystore_outage for w in windows):   # the MemoryStore is down: every operation fails
        ms_rates = dict.fromkeys(MEMORYSTORE_FAULT_KEYS, 1.0)
    return FaultConfig(seed=scenario.world.seed, error_rate=rates, latency=latency, outages=outages,
                       ambiguous_write_rate=ambiguous, base_latency=datastore_latency(scenario),
                       memorystore_error_rate=ms_rates, **_messaging_faults(scenario))


def _messaging_faults(scenario: Scenario) -> dict[str, Any]:
    """The scenario's `[messaging]` as FaultConfig fields: they hold the whole run, whatever the fault windows."""
    return {"messaging_delay": scenario.messaging.delay, "messaging_drop_rate": scenario.messaging.drop_rate}


def _fault_boundaries(scenario: Scenario) -> list[float]:
    return sorted({b for w in scenario.faults for b in (w.start, w.end) if 0 < b < scenario.world.duration})


class _Display:
    """Live progress: one line redrawn on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, stream: TextIO, live: bool | None, duration_s: float) -> None:
        self.stream = stream
        self.tty = stream.isatty() if live is None else live
        self.duration_s = duration_s
        self._last_plain = -math.inf   # the first update prints at once
        self._last_ops = (0.0, 0)

    def update(self, t_s: float, collector: Collector, wall: float, final: bool = False) -> None:
        ops = sum(len(v) for v in collector.latency.values())
        last_wall, last_ops = self._last_ops
        rate = (ops - last_ops) / (wall - last_wall) if wall > last_wall else 0.0
        self._last_ops = (wall, ops)
        servers, players = collector.live()
        errors = sum(collector.errors.values())
        line = (f"t={_clock(t_s)}/{_clock(self.duration_s)}  servers {servers:>3}  players {players:>5}  "
                f"ops/s {rate:>7.0f}  throttled {sum(collector._throttled.values()):>5}  errors {errors:>5}")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
            self.stream.flush()
        elif final or wall - self._last_plain >= 5.0:
            self._last_plain = wall
            self.stream.write(line + "\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _say_dashboard(options: RunOptions, url: str) -> None:
    """Where Ray's dashboard of this run is, and its metrics for Prometheus (both close with the run's Ray)."""
    from lodestore.storage import metrics_url
    stream = options.stream or sys.stdout
    stream.write(f"dashboard: {url} (Ray's dashboard of this run; it closes when the run ends)\n")
    metrics = metrics_url()
    if metrics is not None:
        stream.write(f"metrics: {metrics} (ray_lodestore_sim_* among Ray's own, for Prometheus)\n")
    stream.flush()


class _Metrics:
    """The run's figures through `ray.util.metrics`, for the Ray dashboard (a no-op when metrics are unavailable)."""

    def __init__(self, scenario_name: str) -> None:
        self._ok = False
        try:
            from ray.util import metrics
            tags = ("scenario",)
            self._ops = metrics.Counter("lodestore_sim_ops", "Simulated player operations", tag_keys=tags + ("op",))
            self._errors = metrics.Counter("lodestore_sim_errors", "Failed operations by error", tag_keys=tags
                                           + ("code",))
            self._players = metrics.Gauge("lodestore_sim_players_online", "Players online", tag_keys=tags)
            self._servers = metrics.Gauge("lodestore_sim_servers", "Game servers up", tag_keys=tags)
            self._throttled = metrics.Gauge("lodestore_sim_throttled", "DataStore requests throttled so far",
                                            tag_keys=tags)
            self._tags = {"scenario": scenario_name}
            self._ok = True
        except Exception:
            pass

    def record(self, drain: dict, collector: Collector) -> None:
        if not self._ok:
            return
        try:
            counts: dict[str, int] = {}
            for _, op, _, code in drain["samples"]:
                counts[op] = counts.get(op, 0) + 1
                if code is not None:
                    self._errors.inc(1, {**self._tags, "code": code})
            for op, n in counts.items():
                self._ops.inc(n, {**self._tags, "op": op})
            servers, players = collector.live()
            self._players.set(players, self._tags)
            self._servers.set(servers, self._tags)
            self._throttled.set(sum(collector._throttled.values()), self._tags)
        except Exception:
            self._ok = False


class _Router:
    """Which host runs which server, and the plan's events cut into per-host batches. A lost host takes no new
    servers; events for its servers are dropped (they died with it)."""

    def __init__(self, hosts: int) -> None:
        self.hosts = hosts
        self.placement: dict[str, int] = {}
        self.lost: set[int] = set()
        self._next = 0
        self.teleports = 0

    def _pick(self) -> int:
        for _ in range(self.hosts):
            index = self._next % self.hosts
            self._next += 1
            if index not in self.lost:
                return index
        raise RuntimeError("every simulator host was lost; the run cannot go on")

    def route(self, events: list[Planned]) -> tuple[dict[int, list[Planned]], dict[str, int]]:
        batches: dict[int, list[Planned]] = {}
        new: dict[str, int] = {}
        for ev in events:
            if ev.kind == "start":
                self.placement[ev.server] = new[ev.server] = self._pick()
            if ev.kind == "teleport":  # leave on the old server, join on the new one, at the same moment
                self.teleports += 1
                parts = [Planned(ev.t, "leave", ev.server, ev.player),
                         Planned(ev.t, "join", ev.target_server, ev.player)]
            else:
                parts = [ev]
            for part in parts:
                index = self.placement[part.server]
                if index not in self.lost:
                    batches.setdefault(index, []).append(part)
        return batches, new

    def servers_of(self, host: int) -> set[str]:
        return {sid for sid, index in self.placement.items() if index == host}


def _scenario_summary(scenario: Scenario) -> dict:
    data = dataclasses.asdict(scenario)
    data.update(name=scenario.world.name, seed=scenario.world.seed, duration_s=scenario.world.duration,
                time_scale=scenario.world.time_scale)
    return json.loads(json.dumps(data, default=str))


def _default_out(scenario: Scenario) -> Path:
    """lodestore-runs/<timestamp>-<world.name>, with -2, -3, ... when a run of the same second has it."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("lodestore-runs") / f"{stamp}-{scenario.world.name}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _default_replay_out(run_dir: Path, name: str = "replay") -> Path:
    """RUN_DIR/replay (or RUN_DIR/`name`), with -2, -3, ... when an earlier one has it."""
    out, n = run_dir / name, 1
    while out.exists():
        n += 1
        out = run_dir / f"{name}-{n}"
    return out


def _out_dir(out: Path) -> bool:
    """Make the report directory `out`, which must be new or empty (a run never overwrites files it did not write).
    Answers whether it was made here."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    try:
        if out.is_dir():
            if any(out.iterdir()):
                raise ConfigError(f"--out {out}: the directory is not empty; a run writes its report and world "
                                  f"there, so give a new or empty directory")
            made = False
        else:
            out.mkdir(parents=True)
            made = True
        probe = out / ".lodestore-write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write there: {exc.strerror or exc}") from None
    return made


def _world_path(scenario: Scenario, out: Path | None) -> str | None:
    if scenario.world.backend != "sqlite":
        return None
    if scenario.world.path is not None:
        path = Path(scenario.world.path)
        if not path.is_absolute() and scenario.source not in ("<string>", ""):
            path = Path(scenario.source).parent / path
    else:
        path = (out if out is not None else Path("lodestore-data")) / "world.db"
    if path.exists():
        raise ConfigError(f"{scenario.source}: world.path: {path} exists; a simulation needs a fresh world file "
                          f"(delete it, or choose another path)")
    try:   # SQLite must be able to create the file (and its -wal and -shm beside it)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=False)
        path.unlink()
    except OSError as exc:
        raise ConfigError(f"{scenario.source}: world.path: cannot create {path}: {exc.strerror or exc}") from None
    return str(path)


def simulate(scenario: Scenario, options: RunOptions = RunOptions()) -> RunResult:
    """Run `scenario` and return its report; write the report files into `options.out` (when `write_files`)."""
    out, made = None, False
    if options.write_files:
        out = options.out if options.out is not None else _default_out(scenario)
        made = _out_dir(out)
    stream = options.stream or sys.stdout
    try:
        path = _world_path(scenario, out if options.write_files else None)
        started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        engine = _Virtual(scenario, options, path, stream, on_ray=options.engine == "ray")
        wall0 = time.monotonic()
        engine.run()
        wall = time.monotonic() - wall0
    except ConfigError:
        if made and not any(out.iterdir()):   # bad input leaves nothing behind
            out.rmdir()
        raise
    collector = engine.collector
    simulated_s = min(engine.sim_time_s, scenario.world.duration)
    player_hours = engine.player_ms / 3_600_000
    run = {"started_at": started_at, "engine": options.engine, "wall_s": round(wall, 3),
           "simulated_s": round(simulated_s, 3), "stopped_early": engine.interrupted,
           "player_hours": round(player_hours, 3),
           "player_hours_per_s": round(player_hours / wall, 3) if wall > 0 else 0.0,
           "hosts": engine.host_count, "world_path": path, "events_planned": engine.planned,
           "scripted": options.events is not None,
           "wall_s_playing": round(engine.play_wall_s, 3), "host_nodes": engine.host_nodes,
           "hosts_lost": engine.lost_hosts, "hop_ms": engine.hop_ms, "windows": engine.windows,
           "node_steps": engine.steps, "messages": engine.messages,
           "node_busy_s": [None if b is None else round(b, 3) for b in engine.busy],
           "node_errors": {"count": len(engine.node_errors), "first": engine.node_errors[:5]}}
    if options.until is not None:   # stopped mid-play: the world file is the product
        report = {"run": run, "until_s": options.until, "scenario": _scenario_summary(scenario)}
        stream.write(f"stopped at simulated {_clock(options.until)}; the world file: {path or '(memory backend)'}\n")
        stream.flush()
        return RunResult(report, [], collector.history, out, {})
    checks = collector.checks(engine.initial, engine.final, engine.hot_finals)
    report = collector.report(scenario=_scenario_summary(scenario), run=run, checks=checks)
    report["totals"]["players"]["teleports"] = engine.router.teleports
    report.update(engine.storage_figures)
    report["design"] = design_summary(scenario)
    if engine.open_cloud is not None or engine.outside_calls:   # what came in, and what became of its writes
        history = collector.history
        served = engine.open_cloud or {"url": None, "total": None, "requests": {}}
        report["open_cloud"] = {**served, "outside_calls": engine.outside_calls,
                                "writes": outside_writes(history.requests, history.lock_events())}
    report["metrics"] = metrics(checks, report)
    report["thresholds"] = check_thresholds(scenario.thresholds, report["metrics"])
    history_json = collector.history.to_json()
    report["digest"] = history_digest(history_json, engine.final, engine.hot_finals)
    files: dict = {}
    if out is not None:
        files = write_report(report, out)
        history_path = out / "history.json"
        history_path.write_text(json.dumps({**history_json, "annotations": collector.annotations(engine.t0)}))
        files["history"] = history_path
        files["scenario"] = out / "scenario.toml"   # exactly what ran, overrides included: `lodestore replay`
        files["scenario"].write_text(scenario_toml(scenario), encoding="utf-8")
        if options.events is not None:   # what was played instead of the plan: `lodestore replay` plays it again
            files["events"] = out / "events.json"
            files["events"].write_text(json.dumps(events_to_json(engine.planner.events)), encoding="utf-8")
        try:   # the timelines of the keys a checker names, where report.html links them
            files["timelines"] = write_timelines(out, report, engine.final)
        except TimelineError as exc:
            stream.write(f"timelines not written: {exc}\n")
    stream.write(summary_table(report) + "\n")
    if out is not None:
        stream.write(f"report: {files['html']}\n")
    stream.flush()
    return RunResult(report, checks, collector.history, out, files)


def history_digest(history: dict, final: dict, hot_finals: dict) -> str:
    """The sha256 of a run's canonical history (`History.to_json()`): every lock and op event (sorted, so the order
    hosts reported them in does not count), every player's final data and every hot key's count. Two runs with the
    same digest did the same things with the same outcomes."""
    digest = hashlib.sha256()
    events = sorted(json.dumps(e, sort_keys=True, separators=(",", ":")) for e in history["events"])
    for line in events:
        digest.update(line.encode())
        digest.update(b"\n")
    digest.update(json.dumps({"final": final, "hot": hot_finals}, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


class _Engine:
    """What the engine shares: the planner, the router, the collector, and the end-of-run reads."""

    def __init__(self, scenario: Scenario, options: RunOptions, path: str | None, stream: TextIO) -> None:
        self.scenario = scenario
        self.options = options
        self.path = path
        self.planner = Planner(scenario) if options.events is None else Script(scenario, options.events)
        world = scenario.world
        self.host_count = options.hosts or max(1, min(2, scenario.servers.count))
        self.router = _Router(self.host_count)
        bucket = max(scenario.servers.step, world.duration / 60)
        store = scenario.store
        self.collector = Collector(world.duration, bucket, slack_s=store.lock_ttl - store.lock_refresh,
                                   leased=design(store.design).leased)
        self.display = _Display(stream, options.progress, world.duration)
        self.interrupted = False
        self.sim_time_s = 0.0
        self.player_ms = 0.0
        self.planned = 0
        self.play_wall_s = 0.0
        self.initial: dict = {}
        self.final: dict = {}
        self.hot_finals: dict = {}
        self._online_at = (0, 0)   # (t_ms, players online in the plan) for player-time accounting
        self._unresolved: dict[int, dict[str, Planned]] = {i: {} for i in range(self.host_count)}
        self.lost_hosts: list[dict] = []
        self.host_nodes: list[str] = []
        self.storage_figures: dict = {}

    def stop_requested(self) -> None:
        """Ctrl-C: the first stops the play (BindToClose, checks and report follow); a second abandons the run."""
        self.interrupted = True
        self.display.stream.write("\nstopping: BindToClose on every server, then the checks (Ctrl-C again to "
                                  "abandon)\n")
        self.display.stream.flush()

    @property
    def world_name(self) -> str:
        return f"sim-{self.scenario.world.name}-{os.getpid()}-{int(time.time() * 1000) % 1_000_000}"

    def plan_until(self, t_ms: int) -> dict[int, list[Planned]]:
        events = self.planner.until(t_ms)
        self.planned += len(events)
        batches, new = self.router.route(events)
        self._new_placement = new
        return batches

    def account(self, t_ms: int) -> None:
        """Player time: the plan's online count integrated over simulated time (up to `t_ms`)."""
        last_t, online = self._online_at
        if t_ms > last_t:
            self.player_ms += online * (t_ms - last_t)
            self._online_at = (t_ms, self.planner.online)

    def finish_data(self, final: dict, hot: dict) -> None:
        template = store_config(self.scenario).template
        # a key with no record never had data, unless an action on it may have happened (then it must have one)
        acknowledged = {k for e in self.collector.history.op_events() if e.outcome != "failed" for k in e.keys}
        self.final = {k: v for k, v in final.items() if v is not None or k in acknowledged}
        # a key with no record holds what a load would give it: the template
        self.initial = {k: json.loads(json.dumps(template)) for k in self.final}
        self.final = {k: (self.initial[k] if v is None else v) for k, v in self.final.items()}
        self.hot_finals = hot

    def population(self) -> list[str]:
        return [player_key(i) for i in range(self.scenario.players.population)]


# ------------------------------------------------------------------------------------------------- the nodes

def _build_cloud(info: virtual.WorldInfo, node: virtual.Node) -> None:
    """The cloud node: the world's storage (shards, MemoryStore, budget ledger) and its coordinator."""
    world = virtual.host_storage(node, info)
    node.host(COORDINATOR_NAME, CoordinatorActor(world))
    node.host(RELAY, Relay(node))


def _build_host(info: virtual.WorldInfo, scenario: Scenario, index: int, t0: int, node: virtual.Node) -> None:
    """Simulator host `index` on node index + 1: its game servers, reaching the cloud node through messages."""
    async def make() -> HostRole:
        world = virtual.virtual_world(node, info)
        return HostRole(node, world, scenario, index, t0, _host_node)
    node.host("sim", node.run(make()))


def _host_node(host: int) -> int:
    return host + 1


_DIRECTORY = {COORDINATOR_NAME: virtual.Address(virtual.CLOUD, COORDINATOR_NAME)}


class _LocalNodes:
    """Every node in this process, stepped one after another (`dispatch` runs the steps, `collect` hands them)."""

    def __init__(self, hop_ms: int, seed: int, builds: list[Callable]) -> None:
        self.nodes = [_make_node(n, hop_ms, seed, build) for n, build in enumerate(builds)]
        self.where = ["in-process"] * len(builds)

    def dispatch(self, calls: dict[int, tuple]) -> Any:
        return {n: self.nodes[n].step(*args) for n, args in calls.items()}

    def collect(self, handle: Any) -> dict[int, Any]:
        return handle

    def call_cloud(self, name: str, method: str, *args: Any) -> Any:
        """A plain method of an object on the cloud node, outside simulated time (closing files at the end)."""
        return getattr(self.nodes[virtual.CLOUD].objects[name], method)(*args)

    def lose(self, n: int) -> None:
        pass

    def busy_s(self) -> list[float]:
        return [node.busy_s for node in self.nodes]

    def errors(self) -> list[str]:
        return [e for node in self.nodes for e in node.errors]

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def _make_node(n: int, hop_ms: int, seed: int, build: Callable) -> virtual.Node:
    node = virtual.Node(n, hop_ms=hop_ms, seed=seed, directory=_DIRECTORY)
    build(node)
    return node


class _RayNodes:
    """The cloud node in this process (beside the world file: no Ray call for storage), each host node a Ray actor
    spread over the cluster, driven through one compiled Ray graph (`ray.dag`: every round calls every host, an
    idle one with nothing to do, over shared-memory channels at a fifth of a plain call's cost, measured). When the
    graph breaks (a host's actor died with its node) or cannot be compiled, the hosts are driven by plain calls from
    then on; a host whose actor died answers its exception."""

    _RESULT_TIMEOUT_S = 300.0

    def __init__(self, hop_ms: int, seed: int, builds: list[Callable]) -> None:
        import ray
        from lodestore.storage import pinned, spread_nodes
        remote = ray.remote(virtual.NodeActor)
        # the same string hashes in every run (a set's order never leaks into a history)
        env = {"env_vars": {"PYTHONHASHSEED": "0"}}
        nodes = [virtual.this_node()] + spread_nodes(len(builds) - 1)
        self.where = nodes
        self.actors = {n: remote.options(num_cpus=0, max_restarts=0, max_task_retries=0, runtime_env=env,
                                         **pinned(nodes[n])).remote(n, hop_ms, seed, _DIRECTORY, build)
                       for n, build in enumerate(builds) if n != virtual.CLOUD}
        self.cloud = _make_node(virtual.CLOUD, hop_ms, seed, builds[virtual.CLOUD])
        ray.get([a.__ray_ready__.remote() for a in self.actors.values()])
        self._order = sorted(self.actors)
        self._round = 0
        self._graph = self._compile()
        self._lost: set[int] = set()

    def _compile(self) -> Any:
        from ray.dag import InputNode, MultiOutputNode
        try:
            with InputNode() as packed:
                dag = MultiOutputNode([self.actors[n].step_packed.bind(packed[i]) for i, n in enumerate(self._order)])
            return dag.experimental_compile()
        except Exception:   # no compiled graphs here (an old Ray, a cluster without them): plain calls
            return None

    def dispatch(self, calls: dict[int, tuple]) -> Any:
        self._round += 1
        hosts = {n: (self._round,) + args for n, args in calls.items() if n != virtual.CLOUD}
        sent: Any = None
        if hosts and self._graph is not None:
            try:
                sent = ("graph", self._graph.execute(*(hosts.get(n) for n in self._order)))
            except Exception:   # the graph broke since the last round (a host died): plain calls from now on
                self._drop_graph()
        if hosts and sent is None:
            sent = ("calls", {n: self.actors[n].step_packed.remote(p) for n, p in hosts.items()})
        local = {n: self.cloud.step(*args) for n, args in calls.items() if n == virtual.CLOUD}
        return sent, hosts, local

    def collect(self, handle: Any) -> dict[int, Any]:
        import ray
        sent, hosts, out = handle
        if sent is None:
            return out
        how, ref = sent
        if how == "graph":
            try:
                answers = ray.get(ref, timeout=self._RESULT_TIMEOUT_S)
            except ray.exceptions.RayTaskError as exc:   # a step raised: an engine bug, not a lost node
                raise exc.as_instanceof_cause() from None
            except Exception:   # the graph broke (a channel closed with a dead actor): each host's answer of
                self._drop_graph()   # this round by a plain call (a step that ran keeps its answer: `last`)
                for n, packed in hosts.items():
                    out[n] = self._recover(n, packed)
                return out
            for n, answer in zip(self._order, answers):
                if n in hosts:
                    out[n] = answer
            return out
        for n, r in ref.items():
            try:
                out[n] = ray.get(r)
            except ACTOR_FAILURES as exc:
                out[n] = exc
            except ray.exceptions.RayTaskError as exc:   # the step itself raised: an engine bug, not a lost node
                raise exc.as_instanceof_cause() from None
        return out

    def _recover(self, n: int, packed: tuple) -> Any:
        """Host `n`'s answer to round `packed[0]`: kept by it, or stepped now; its death when it died."""
        import ray
        try:
            # as patient as a round's answer: a slow host (a loaded machine, a teardown still under way) is not lost
            answer = ray.get(self.actors[n].last.remote(packed[0]), timeout=self._RESULT_TIMEOUT_S)
            if answer is None:
                answer = ray.get(self.actors[n].step_packed.remote(packed))
            return answer
        except (ACTOR_FAILURES + (ray.exceptions.GetTimeoutError,)) as exc:
            return exc
        except ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None

    def _drop_graph(self) -> None:
        graph, self._graph = self._graph, None
        if graph is not None:
            try:
                graph.teardown()
            except Exception:
                pass   # a dead actor's part of the graph: nothing left to tear down

    def call_cloud(self, name: str, method: str, *args: Any) -> Any:
        return getattr(self.cloud.objects[name], method)(*args)

    def lose(self, n: int) -> None:
        import ray
        self._drop_graph()   # a graph over a dead actor never answers again
        ray.kill(self.actors[n], no_restart=True)   # if it is only unreachable, it must not play on unseen
        self._lost.add(n)

    def busy_s(self) -> list[float]:
        import ray
        out = [self.cloud.busy_s]
        for n, actor in sorted(self.actors.items()):
            try:
                out.append(None if n in self._lost else ray.get(actor.busy_s.remote(), timeout=10))
            except Exception:   # a lost node has no figure
                out.append(None)
        return out

    def errors(self) -> list[str]:
        import ray
        out = list(self.cloud.errors)
        for n, actor in sorted(self.actors.items()):
            if n not in self._lost:
                try:
                    out += ray.get(actor.errors.remote(), timeout=10)
                except Exception:
                    pass   # gone meanwhile: nothing more to learn from it
        return out

    def close(self) -> None:
        import ray
        try:
            self._drop_graph()
            self.cloud.close()
        finally:
            for actor in self.actors.values():
                ray.kill(actor, no_restart=True)


class _Virtual(_Engine):
    """The engine: the world as virtual-time nodes (the cloud, then one per host), moved round by round.

    In a round the hosts step through a window of two hops (in parallel), then the cloud through its window, shifted
    by a hop (see `_windows`): no node ever sees a message from its past, since none is faster than a hop. Idle
    stretches are skipped (the next round is the first in which a timer, message, planned event, drain or fault
    boundary is due). Simulated time never comes from the wall clock; with `world.time_scale` set, the driver only
    waits for the wall clock to catch up.
    """

    def __init__(self, *args: Any, on_ray: bool) -> None:
        super().__init__(*args)
        self.on_ray = on_ray
        self.hop_ms = max(1, int(round(_hop_ms(self.scenario))))
        self.window_ms = 2 * self.hop_ms   # see `_windows`
        self.t0 = virtual.EPOCH_MS + 1000
        self.windows = 0
        self.messages = 0
        self.steps = 0
        self._msgs: dict[int, list[virtual.Message]] = {}
        self._due: dict[int, int | None] = {}
        self._starts: dict[int, list[tuple]] = {}
        self._done: dict[int, tuple[bool, Any]] = {}
        self._drains: dict[int, int] = {}    # drain task -> host
        self._lost: set[int] = set()
        self._tasks = 0
        self._fake_seq = 0
        self._metrics: _Metrics | None = None
        self._doors: list[_Door] = []   # calls from outside the run into its world (`storage._ingress`)
        self.server: Any = None         # the run's Open Cloud server (`[serve]`), while it plays
        self.open_cloud: dict | None = None   # what it answered, by endpoint and status (for the report)
        self.outside_calls = 0                # storage calls from outside (every ingress), for the report
        self.busy: list = []    # wall seconds each node spent stepping (cloud first)
        self.node_errors: list[str] = []   # what failed in tasks nobody awaited (a message sent without an answer)

    # ------------------------------------------------------------------------------------------------- run

    def run(self) -> None:
        sc = self.scenario
        if sc.serve.port is not None:   # what would stop the run's server is refused before anything starts
            from lodestore.storage.opencloud import check_listen, parse_api_keys
            parse_api_keys(list(sc.serve.api_keys) or None)
            check_listen(sc.serve.host, sc.serve.port)
        budget = None if sc.world.budget == "none" else sc.world.budget
        info = self.info = virtual.WorldInfo(self.world_name, sc.world.backend, self.path, sc.world.shards,
                                             ManualClock(virtual.EPOCH_MS),
                                             FaultConfig(seed=sc.world.seed, **_messaging_faults(sc)), budget,
                                             sc.world.storage)
        builds = [functools.partial(_build_cloud, info)]
        builds += [functools.partial(_build_host, info, sc, i, self.t0) for i in range(self.host_count)]
        started_ray = False
        if self.on_ray:
            import ray
            started_ray = not ray.is_initialized()
            try:
                url = virtual.ensure_ray(self.options.address, dashboard=self.options.dashboard and started_ray)
            except (ConnectionError, ConfigError) as exc:
                if isinstance(exc, ConfigError) and exc.field != "address":
                    raise
                raise ConfigError(f"--address {self.options.address}: {exc}") from None
            if url is not None:
                _say_dashboard(self.options, url)
            self._metrics = _Metrics(sc.world.name)
        restore = self._catch_ctrl_c()
        try:
            self.nodes = (_RayNodes if self.on_ray else _LocalNodes)(self.hop_ms, sc.world.seed, builds)
            try:
                self.host_nodes = list(self.nodes.where[1:])
                self._msgs = {n: [] for n in range(len(builds))}
                self._due = {n: None for n in range(len(builds))}
                self._play()
                self.busy = self.nodes.busy_s()
                self.node_errors = self.nodes.errors()
            finally:
                try:
                    self._close_storage()
                finally:
                    self.nodes.close()
        finally:
            restore()
            if started_ray and self.options.address is None:
                import ray
                ray.shutdown()

    def _catch_ctrl_c(self) -> Callable[[], None]:
        """The first Ctrl-C stops the play (BindToClose, the checks and the report follow), the second abandons the
        run (KeyboardInterrupt). Only in the main thread; elsewhere Ctrl-C is not ours."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_sigint(_signum: int, _frame: Any) -> None:
            if self.interrupted:
                raise KeyboardInterrupt
            self.stop_requested()
        previous = signal.signal(signal.SIGINT, on_sigint)
        return lambda: signal.signal(signal.SIGINT, previous)

    def _play(self) -> None:
        sc = self.scenario
        t0 = self.t0
        end = t0 + int(sc.world.duration * 1000)
        if self.options.until is not None:
            end = min(end, t0 + int(self.options.until * 1000))
        drain_ms = max(1000, int(min(self.collector.bucket_s, 30.0) * 1000))
        self._next_drain = t0 + drain_ms
        self._boundaries = [t0] + [t0 + int(b * 1000) for b in _fault_boundaries(sc)]
        self._start(virtual.CLOUD, MEMORYSTORE_NAME, "set_latency", (memorystore_latency(sc), sc.world.seed))
        wall0 = time.monotonic()
        shown = [-math.inf]

        def prepare_hosts(t: int, e: int) -> None:
            """What the hosts' window [t, e] starts: the plan's events (those before the run's end), drains."""
            batches = self.plan_until(min(e + 1, end) - t0)
            new = self._new_placement
            for index, batch in batches.items():
                self._unresolved[index].update((ev.op_id, ev) for ev in batch if ev.op_id is not None)
            for index in self._live():
                if index in batches or new:
                    self._start(_host_node(index), "sim", "apply", (batches.get(index, []), new))
            if t >= self._next_drain:
                self._drains.update({self._start(_host_node(i), "sim", "drain", ()): i for i in self._live()})
                while self._next_drain <= t:
                    self._next_drain += drain_ms

        def prepare_cloud(t: int, e: int) -> None:
            """What the cloud's window [t, e] starts: the fault windows that begin or end in it, and the calls that
            came in from outside (answering those that ended)."""
            while self._boundaries and self._boundaries[0] <= e:
                at = max(t, self._boundaries.pop(0))
                self._set_faults(fault_config_at(sc, (at - t0) / 1000, t0), at)
            for door in list(self._doors):
                if not door.exchange(self, t):
                    self._doors.remove(door)

        def after(e: int) -> None:
            self._take_drains()
            self.account(min(e + 1, end) - t0)
            self.sim_time_s = (min(e + 1, end) - t0) / 1000
            wall = time.monotonic() - wall0
            if sc.world.time_scale:   # paced: the wall clock catches up with simulated time
                ahead = (e + 1 - t0) / 1000 / sc.world.time_scale - wall
                if ahead > 0:
                    time.sleep(ahead)
            if wall - shown[0] >= 0.5:
                shown[0] = wall
                self.display.update(self.sim_time_s, self.collector, wall)

        self._open_doors(wall0)
        try:
            k = self._windows(0, end, prepare_hosts, prepare_cloud, after, stop=self._stop_asked)
        finally:
            self._close_doors()
        self._take_drains()
        self.play_wall_s = time.monotonic() - wall0
        if self.options.until is not None:
            return
        self._set_faults(FaultConfig(seed=sc.world.seed, base_latency=datastore_latency(sc),   # the faults end
                                     **_messaging_faults(sc)))
        finish = {self._start(_host_node(i), "sim", "finish", ()): i for i in self._live()}
        k = self._run_until(finish, k)
        for task, i in finish.items():
            if i in self.router.lost:
                continue
            self._take(i, self._result(task))
        for i in self._live():   # planned for after the stop (Ctrl-C): never run, recorded as unknown to be safe
            self.collector.add_ops(self._unresolved_ops(i, "NotRun"))
        k = self._run_until({self._start(virtual.CLOUD, COORDINATOR_NAME, "recover", ()): None}, k)
        self.collector.close_locks()
        self.storage_figures = self._storage_figures()   # before the verifier's reads
        keys = self.population()
        live = self._live()
        if not live:
            raise RuntimeError("every simulator host was lost; nothing is left to read the final data")
        peeks = {self._start(_host_node(i), "sim", "peek", (keys[n::len(live)],)): i for n, i in enumerate(live)}
        hot_task = self._start(_host_node(live[0]), "sim", "read_hot", (list(self.planner.hot_keys),))
        self._run_until({**peeks, hot_task: live[0]}, k, lose=False)
        final: dict = {}
        for task in peeks:
            final.update(self._result(task))
        self.finish_data(final, self._result(hot_task))
        self.display.update(self.sim_time_s, self.collector, time.monotonic() - wall0, final=True)

    # ------------------------------------------------------------------------------------------------ windows
    #
    # Hosts talk only to the cloud and the cloud only to hosts (and to itself, inside its node), and every message
    # takes a hop h. So the two sides take turns over windows of 2h, the cloud's shifted by h: host window k is
    # [t0 + 2hk, t0 + 2h(k+1)), cloud window k is that plus h. What hosts send in their window k arrives within
    # cloud window k; what the cloud sends in its window k arrives within host window k + 1. Each side's window is
    # two hops long, and one round (every busy host in parallel, then the cloud) moves the world 2h on.

    def _host_window(self, k: int) -> tuple[int, int]:
        start = self.t0 + k * self.window_ms
        return start, start + self.window_ms - 1

    def _cloud_window(self, k: int) -> tuple[int, int]:
        start = self.t0 + k * self.window_ms + self.hop_ms
        return start, start + self.window_ms - 1

    def _windows(self, k: int, end: int | None, prepare_hosts: Callable[[int, int], None] | None,
                 prepare_cloud: Callable[[int, int], None] | None, after: Callable[[int], None] | None,
                 stop: Callable[[], bool]) -> int:
        """Play rounds from round `k` while the hosts' window starts before `end` (None: no end) and not `stop()`;
        answers the next round. After each round the next is the first in which anything is due (idle stretches are
        skipped). The in-process engine and Ray play exactly the same rounds, so both give the same history.

        (Measured and dropped: windows of one hop with every node stepping at once, and pipelining windows of half a
        hop. On this class of machine a Ray call's CPU cost, not its latency, is what a round costs, so the fewest
        rounds per simulated second win.)"""
        while (end is None or self._host_window(k)[0] < end) and not stop():
            hosts = self._host_window(k)
            if prepare_hosts is not None:
                prepare_hosts(*hosts)
            self._collect(self._dispatch([n for n in self._msgs if n != virtual.CLOUD], *hosts))
            cloud = self._cloud_window(k)
            if prepare_cloud is not None:
                prepare_cloud(*cloud)
            self._collect(self._dispatch([virtual.CLOUD], *cloud))
            if after is not None:
                after(hosts[1])
            nxt = self._next_round(k + 1, end)
            if end is None and nxt is None and not stop():
                raise RuntimeError("the run's end is stuck: a task waits with nothing left to run")
            k = nxt if nxt is not None else k + 1
        return k

    def _stop_asked(self) -> bool:
        """Ctrl-C, or the caller's `RunOptions.stop` event: the play ends (the run is marked stopped early)."""
        if self.options.stop is not None and self.options.stop.is_set():
            self.interrupted = True
        return self.interrupted

    def _open_doors(self, wall0: float) -> None:
        """A paced run opens its world to outside callers: with `[serve]` to its own Open Cloud server (a thread of
        this process, through an in-process ingress), and on Ray to other processes (`lodestore serve --world
        NAME`, `World.connect`) through an ingress actor named in the scenario's world's namespace. Their clock
        follows the run's pace from `wall0` (the play's start, `time.monotonic()`), when simulated time was `t0`."""
        sc = self.scenario
        if not sc.world.time_scale:
            return
        pace = (dataclasses.replace(self.info, name=sc.world.name), self.t0, time.time() - (time.monotonic() - wall0),
                sc.world.time_scale)
        if sc.serve.port is not None:
            self._serve(pace)
        if self.on_ray:
            self._open_to_ray(pace)
        self.display.stream.flush()

    def _serve(self, pace: tuple) -> None:
        from lodestore.storage import Ingress, ingress_world
        from lodestore.storage.opencloud import DEFAULT_API_KEY, LOOPBACK_HOSTS, ServerThread, create_app
        serve = self.scenario.serve
        ingress = Ingress(*pace)
        world = ingress_world(ingress)   # its clients record their requests into the ingress
        self._doors.append(_Door(ingress))
        self.server = ServerThread(lambda: create_app(world, api_keys=list(serve.api_keys) or None,
                                                      universe_id=serve.universe_id), serve.host, serve.port).start()
        say = self.display.stream.write
        say(f"serving Open Cloud for this run at {self.server.url} (universe {serve.universe_id})\n")
        if not serve.api_keys:
            say(f"  accepting the API key {DEFAULT_API_KEY!r} (every permission); [serve] api_keys chooses keys\n")
        if serve.host not in LOOPBACK_HOSTS:
            say(f"  warning: listening on {serve.host}, beyond this machine, over plain HTTP\n")

    def _open_to_ray(self, pace: tuple) -> None:
        import ray
        from lodestore.storage import INGRESS_NAME, IngressActor, namespace_of, pinned
        name = self.scenario.world.name
        try:   # beside the cloud node, in the driver's node: a lost worker node never takes the door with it
            actor = ray.remote(IngressActor).options(name=INGRESS_NAME, namespace=namespace_of(name), num_cpus=0,
                                                     max_concurrency=1000,
                                                     **pinned(virtual.this_node())).remote(*pace)
            ray.get(actor.describe.remote())
        except ValueError:   # the name is taken: another run of a world named so is open
            self.display.stream.write(f"note: another run of world {name!r} is open to outside callers; this one "
                                      f"is not\n")
            return
        except ACTOR_FAILURES as exc:   # the door died as it opened: the run plays on without one
            self.display.stream.write(f"note: world {name!r} could not open to outside callers "
                                      f"({type(exc).__name__})\n")
            return
        self._doors.append(_Door(actor))
        join = "" if self.options.address is not None else f" --address {ray.get_runtime_context().gcs_address}"
        self.display.stream.write(f"world {name!r} is open: `lodestore serve --world {name}{join}` serves it over "
                                  f"Open Cloud while the run plays\n")

    def _close_doors(self) -> None:
        """The play ended: outside calls hear so, the run's Open Cloud server stops, and what came in stays: the
        outside clients' raw requests join the game servers' in the history (checked by consistency, shown in the
        keys' timelines), and the server's figures are kept."""
        doors, self._doors = self._doors, []
        closed = [(door, *door.close(self)) for door in doors]
        if self.server is not None:
            self.server.stop()
        for door, calls, records in closed:
            if door.local:   # and what the server's last requests recorded as they heard the end
                records += door.ingress.take_records()
            self.outside_calls += calls
            self.collector.history.requests.extend(since_start(records, self.t0))
        if self.server is not None and self.server.app is not None:
            stats = self.server.app.state.opencloud.statistics()
            self.open_cloud = {"url": self.server.url, "total": stats.total,
                               "requests": {endpoint: {str(status): n for status, n in by_status.items()}
                                            for endpoint, by_status in stats.requests.items()}}

    def _start(self, node: int, name: str, method: str, args: tuple, at: int | None = None) -> int:
        """Start `name.method(*args)` on `node` at simulated time `at` (None, or a time before the node's next
        window: at that window's start); answers its task id."""
        self._tasks += 1
        self._starts.setdefault(node, []).append((at, self._tasks, name, method, args))
        return self._tasks

    def _set_faults(self, faults: FaultConfig, at: int | None = None) -> None:
        for i in range(self.scenario.world.shards):
            self._start(virtual.CLOUD, datastore_name(i), "set_faults", (faults,), at)
        self._start(virtual.CLOUD, MEMORYSTORE_NAME, "set_faults", (faults,), at)
        self._start(virtual.CLOUD, MESSAGING_NAME, "set_faults", (faults,), at)

    def _dispatch(self, nodes: list[int], t: int, e: int) -> Any:
        """Send the window [t, e] to each of `nodes` with something to do in it; answers the nodes' handle, or None."""
        calls = {}
        for n in nodes:
            if n in self._lost:
                continue
            queued = self._msgs[n]
            inbox = [m for m in queued if m.at <= e]
            if inbox:
                self._msgs[n] = [m for m in queued if m.at > e]
            starts, later = [], []
            for start in self._starts.pop(n, []):
                at = start[0]
                if at is None or at <= e:
                    starts.append((t if at is None or at < t else at,) + start[1:])
                else:
                    later.append(start)
            if later:
                self._starts[n] = later
            due = self._due[n]
            if inbox or starts or (due is not None and due <= e):
                calls[n] = (e, inbox, starts)
        if not calls:
            return None
        self.windows += 1
        self.steps += len(calls)
        return self.nodes.dispatch(calls)

    def _collect(self, sent: Any) -> None:
        """Take in a window's answers: route the messages, note the next timers and the tasks that ended."""
        if sent is None:
            return
        for n, answer in sorted(self.nodes.collect(sent).items()):
            if isinstance(answer, BaseException):
                self._lose_node(n, answer)
                continue
            out, due, done = answer
            self._due[n] = due
            self._done.update(done)
            self.messages += len(out)
            for msg in out:
                self._route(msg)

    def _route(self, msg: virtual.Message) -> None:
        if msg.dst not in self._lost:
            self._msgs[msg.dst].append(msg)
        elif msg.kind == virtual.CALL:   # the callee's node is gone: the caller hears it, a hop later
            self._fake_seq += 1
            lost = virtual.NodeLost(virtual.Address(msg.dst, msg.target))
            self._route(virtual.Message(msg.at + self.hop_ms, msg.dst, 1 << 40 | self._fake_seq, msg.src,
                                        virtual.REPLY, "", "", (False, lost), msg.call))

    def _next_round(self, k: int, end: int | None) -> int | None:
        """The first round from `k` on in which anything is due (None: nothing at all is)."""
        live = [n for n in self._msgs if n not in self._lost]
        host_times, cloud_times = [], []
        for n in live:
            times = cloud_times if n == virtual.CLOUD else host_times
            if self._due[n] is not None:
                times.append(self._due[n])
            times.extend(m.at for m in self._msgs[n])
            times.extend(-1 if at is None else at for at, *_ in self._starts.get(n, ()))
        if end is not None and self._doors:   # serving: every round is played, so outside calls never wait long
            cloud_times.append(self._cloud_window(k)[0])
        if end is not None:
            nxt = self.planner.next_at()
            if nxt is not None:
                host_times.append(self.t0 + nxt)
            host_times.append(self._next_drain)
            if self._boundaries:
                cloud_times.append(self._boundaries[0])
            host_times.append(end)
        rounds = [(t - self.t0) // self.window_ms for t in host_times]
        rounds += [(t - self.t0 - self.hop_ms) // self.window_ms for t in cloud_times]
        if not rounds:
            return None
        return max(k, min(rounds))

    def _run_until(self, tasks: dict[int, Any], k: int, lose: bool = True) -> int:
        """Play rounds from `k` until every task of `tasks` has ended (or its host was lost); answers the next round."""
        lost_before = set(self.router.lost)

        def finished() -> bool:
            if not lose and self.router.lost != lost_before:
                raise RuntimeError("a simulator host was lost while reading the final data")
            return all(t in self._done or host in self.router.lost for t, host in tasks.items())

        def after(e: int) -> None:
            self.sim_time_s = max(self.sim_time_s, (e + 1 - self.t0) / 1000)
        return self._windows(k, None, None, None, after, stop=finished)

    def _result(self, task: int) -> Any:
        ok, value = self._done.pop(task)
        if not ok:
            raise value
        return value

    def _take_drains(self) -> None:
        for task, i in list(self._drains.items()):
            if task in self._done:
                del self._drains[task]
                if i not in self.router.lost:
                    self._take(i, self._result(task))

    def _storage_figures(self) -> dict:
        """What the run asked of the cloud: DataStore requests by type, MemoryStore operations by kind, the bytes
        the DataStore holds (every key's current value) and the MemoryStore, and MessagingService's messages
        (published, refused over a send limit, delivered to a subscribing server, dropped by reason)."""
        datastore: Counter = Counter()
        stored = 0
        for i in range(self.info.shards):
            stats = self.nodes.call_cloud(datastore_name(i), "statistics")
            datastore.update(stats.requests_by_type)
            stored += stats.stored_bytes
        memory = self.nodes.call_cloud(MEMORYSTORE_NAME, "statistics")
        # Roblox's storage limit: the compressed latest versions (the shards of one shared file each see all of it),
        # against 500 MB + 1 MB per lifetime user; every player of the scenario's population counts as one.
        holders = [0] if self.info.shared_file else range(self.info.shards)
        compressed = sum(self.nodes.call_cloud(datastore_name(i), "storage_bytes") for i in holders)
        usage = StorageUsage.figures(compressed, self.scenario.players.population)
        usage["estimated_monthly_cost_usd"] = round(usage["estimated_monthly_cost_usd"], 6)
        messaging = self.nodes.call_cloud(MESSAGING_NAME, "statistics")
        return {"messaging": {"published": messaging.published, "throttled": messaging.throttled,
                              "delivered": messaging.delivered, "dropped": dict(messaging.dropped)},
                "requests": {"datastore": dict(sorted(datastore.items())), "datastore_total": sum(datastore.values()),
                             "memorystore": dict(sorted(memory.requests.items())),
                             "memorystore_total": sum(memory.requests.values())},
                "storage": {"datastore_bytes": stored, "memorystore_bytes": memory.bytes_used, **usage}}

    def _close_storage(self) -> None:
        """Close the world's files (each shard's WAL checkpointed in), the shards holding a file's lock last, as
        `World.shutdown` does."""
        shards = range(self.info.shards)
        for i in [i for i in shards if not self.info.holds_file(i)] + [i for i in shards if self.info.holds_file(i)]:
            self.nodes.call_cloud(datastore_name(i), "close")

    # ----------------------------------------------------------------------------------------- lost hosts

    def _live(self) -> list[int]:
        return [i for i in range(self.host_count) if i not in self.router.lost]

    def _take(self, index: int, drain: dict) -> None:
        unresolved = self._unresolved[index]
        for op in drain["ops"]:
            unresolved.pop(op[3], None)
        self.collector.add(index, drain)
        if self._metrics is not None:
            self._metrics.record(drain, self.collector)

    def _unresolved_ops(self, index: int, why: str) -> list[tuple]:
        """The actions sent to host `index` that it never reported an outcome for, as unknown outcomes."""
        events, self._unresolved[index] = self._unresolved[index], {}
        return [(ev.t, ev.player, ev.server, ev.op_id, ev.kind, "unknown", ev.amount, ev.item, ev.target, why, None)
                for ev in events.values()]

    def _lose_node(self, n: int, exc: BaseException) -> None:
        if n == virtual.CLOUD:
            raise RuntimeError(f"the cloud node (the world's storage) was lost: {type(exc).__name__}: {exc}") from exc
        self._lost.add(n)
        self.nodes.lose(n)
        self._msgs[n] = []
        self._starts.pop(n, None)
        self._lose_host(n - 1, exc)

    def _lose_host(self, index: int, exc: BaseException) -> None:
        """Host `index` died with its node: its servers crashed (their sessions are gone unsaved, their locks
        expire, their players reconnect to other servers), what it had not reported is unknown."""
        self.router.lost.add(index)
        servers = self.router.servers_of(index)
        crashed = self.planner.lose(servers)
        self.collector.lose_host(index, servers, len(crashed), self._unresolved_ops(index, "NodeLost"))
        self.lost_hosts.append({"host": index, "node": self.host_nodes[index], "at_s": round(self.sim_time_s, 3),
                                "servers": crashed, "error": type(exc).__name__})
        self.display.stream.write(f"\nhost {index} lost ({type(exc).__name__}): servers {', '.join(crashed) or '-'} "
                                  f"crashed with it; their players reconnect elsewhere\n")


class _Door:
    """One ingress into the run's world (`storage._ingress`), in this process or a Ray actor: each cloud window
    answers the outside calls that ended and starts those that came in, as tasks on the cloud node."""

    POLL_S = 0.02   # an ingress actor is asked at most this often (wall seconds) when nothing waits for an answer

    def __init__(self, ingress: Any) -> None:
        from lodestore.storage import Ingress
        self.ingress = ingress
        self.local = isinstance(ingress, Ingress)
        self.tasks: dict[int, int] = {}   # cloud task -> the ingress's call id
        self.polled = 0.0

    def _answers(self, engine: "_Virtual") -> list[tuple]:
        """(call id, ok, value) of every outside call whose task ended; the others keep waiting."""
        answers, waiting = [], {}
        for task, call in self.tasks.items():
            if task in engine._done:
                answers.append((call, *engine._done.pop(task)))
            else:
                waiting[task] = call
        self.tasks = waiting
        return answers

    def exchange(self, engine: "_Virtual", t: int) -> bool:
        """At the start `t` of a cloud window: answer what ended and start what came in; False when the ingress
        actor is gone (the run plays on, closed to outside callers, who heard so from Ray)."""
        answers = self._answers(engine)
        if self.local:
            calls = self.ingress.exchange(answers, t)
        else:
            now = time.monotonic()
            if not answers and now - self.polled < self.POLL_S:
                return True
            self.polled = now
            import ray
            try:
                calls = ray.get(self.ingress.exchange.remote(answers, t))
            except ACTOR_FAILURES as exc:
                engine.display.stream.write(f"\nthe run's ingress is gone ({type(exc).__name__}): it is closed to "
                                            f"outside callers from now on\n")
                return False
        for call, name, method, args in calls:
            self.tasks[engine._start(virtual.CLOUD, name, method, tuple(args))] = call
        return True

    def close(self, engine: "_Virtual") -> tuple[int, list[tuple]]:
        """Answer what ended; every other outside call hears SimulationEnded, and the ingress takes no more. The
        number of calls it took, and the raw request records its callers' clients sent (simulated ms)."""
        why = "the simulation's play ended"
        answers = self._answers(engine)
        self.tasks = {}
        if self.local:
            self.ingress.answer(answers)
            self.ingress.close(why)
            return self.ingress.calls, self.ingress.take_records()
        import ray
        try:
            ray.get(self.ingress.exchange.remote(answers))
            ray.get(self.ingress.close.remote(why))
            return ray.get(self.ingress.calls.remote()), ray.get(self.ingress.take_records.remote())
        except ACTOR_FAILURES:
            return 0, []   # gone already: its callers heard that from Ray, and what they sent is gone with it
        finally:
            ray.kill(self.ingress, no_restart=True)


def _hop_ms(scenario: Scenario) -> float:
    return scenario.latency.hop_ms

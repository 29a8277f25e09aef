"""Running a scenario: build the world, play the plan on simulated game servers, check the outcome, report.

Owns: `simulate(scenario, options)`, the driver of `lodestore simulate`. Two engines play the same plan:

- "ray" (the default): the world's storage actors, the coordinator and `hosts` `SimHostActor`s on Ray (local, or a
  cluster with `address`). Time runs at `time_scale` on the shared clock. The driver hands each host the events of
  the next moments in one message per tick, collects what the hosts recorded twice a second, shows progress, and
  exports figures through `ray.util.metrics`.
- "in-process": everything in this process on one event loop with a `ManualClock`, moved step by step. No Ray; the
  whole run, outcomes included, is a function of the seed (tests use it).

Either way the event sequence is the planner's, a function of the scenario and its seed. At the end (or on Ctrl-C)
every server still up runs BindToClose, the final data of every player is read from storage, the checkers run, and
the report is written.

Never does: choose events (the planner), execute them (the hosts) or render the report (`sim._report`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from lodestore.coordinator import coordinator_ref
from lodestore.sim._checkers import CheckResult
from lodestore.sim._collect import Collector
from lodestore.sim._host import SimHost, SimHostActor
from lodestore.sim._report import summary_table, write_report
from lodestore.sim._scenario import Scenario, store_config
from lodestore.sim._workload import Planned, Planner, player_key
from lodestore.storage import ACTOR_FAILURES, ConfigError, FaultConfig, Latency, ManualClock, Outage, Scheduler, World

__all__ = ["RunOptions", "RunResult", "simulate", "fault_config_at"]

_DRAIN_EVERY_S = 0.5
_LEAD_S = 2.0   # wall seconds: the hosts hold every event that long before it is due, so that a driver busy with a
                # drain never makes one late (at 0.2 s, an outage run at 60x started half of its events late)


@dataclass(frozen=True)
class RunOptions:
    """How to run a scenario (the command line's options)."""

    out: Path | None = None            # report directory; default lodestore-runs/<timestamp>-<name>
    engine: str = "ray"                # "ray" | "in-process"
    address: str | None = None         # a Ray cluster to join ("auto"); None starts local Ray when needed
    hosts: int | None = None           # SimHost actors (default: 2, at most one per initial server)
    tick_s: float = 0.1                # wall seconds between dispatches (ray engine)
    progress: bool | None = None       # live display; None: only on a terminal
    write_files: bool = True
    stream: TextIO | None = None       # where progress and the summary go (default stdout)

    def __post_init__(self) -> None:
        if self.engine not in ("ray", "in-process"):
            raise ConfigError(f"engine must be 'ray' or 'in-process', got {self.engine!r}")
        if self.hosts is not None and (isinstance(self.hosts, bool) or not isinstance(self.hosts, int)
                                       or not 1 <= self.hosts <= 64):
            raise ConfigError(f"hosts must be an int from 1 to 64, got {self.hosts!r}")
        if not (isinstance(self.tick_s, (int, float)) and 0.01 <= self.tick_s <= 5):
            raise ConfigError(f"tick_s must be a number of seconds from 0.01 to 5, got {self.tick_s!r}")


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
    def exit_status(self) -> int:
        """0: every checker passed; 1: one failed; 3: inconclusive (the checks passed, but the harness could not
        keep up: see `report["health"]`); 130: stopped early by Ctrl-C (and no checker failed)."""
        if not self.ok:
            return 1
        if self.report["run"]["stopped_early"]:
            return 130
        return 0 if self.report["verdict"] == "pass" else 3


def fault_config_at(scenario: Scenario, t_s: float, t0: int) -> FaultConfig:
    """The storage faults of every window active at simulated second `t_s`, with all outage windows (absolute ms)."""
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
    return FaultConfig(seed=scenario.world.seed, error_rate=rates, latency=latency, outages=outages,
                       ambiguous_write_rate=ambiguous)


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
        runner = _InProcess if options.engine == "in-process" else _OnRay
        engine = runner(scenario, options, path, stream)
        wall0 = time.monotonic()
        engine.run()
        wall = time.monotonic() - wall0
    except ConfigError:
        if made and not any(out.iterdir()):   # bad input leaves nothing behind
            out.rmdir()
        raise
    collector = engine.collector
    simulated_s = min(engine.sim_time_s, scenario.world.duration)
    checks = collector.checks(engine.initial, engine.final, engine.hot_finals)
    player_hours = engine.player_ms / 3_600_000
    run = {"started_at": started_at, "engine": options.engine, "wall_s": round(wall, 3),
           "simulated_s": round(simulated_s, 3), "stopped_early": engine.interrupted,
           "player_hours": round(player_hours, 3),
           "player_hours_per_s": round(player_hours / wall, 3) if wall > 0 else 0.0,
           "hosts": engine.host_count, "world_path": path, "events_planned": engine.planned,
           "wall_s_playing": round(engine.play_wall_s, 3), "host_nodes": engine.host_nodes,
           "hosts_lost": engine.lost_hosts}
    report = collector.report(scenario=_scenario_summary(scenario), run=run, checks=checks)
    report["totals"]["players"]["teleports"] = engine.router.teleports
    files: dict = {}
    if out is not None:
        files = write_report(report, out)
        history_path = out / "history.json"
        history_path.write_text(json.dumps(collector.history.to_json()))
        files["history"] = history_path
    stream.write(summary_table(report) + "\n")
    if out is not None:
        stream.write(f"report: {files['html']}\n")
    stream.flush()
    return RunResult(report, checks, collector.history, out, files)


class _Engine:
    """What both engines share: the planner, the router, the collector, and the end-of-run reads."""

    def __init__(self, scenario: Scenario, options: RunOptions, path: str | None, stream: TextIO) -> None:
        self.scenario = scenario
        self.options = options
        self.path = path
        self.planner = Planner(scenario)
        world = scenario.world
        self.host_count = options.hosts or max(1, min(2, scenario.servers.count))
        self.router = _Router(self.host_count)
        bucket = max(scenario.servers.step, world.duration / 60)
        store = scenario.store
        self.collector = Collector(world.duration, bucket, world.time_scale, slack_s=store.lock_ttl - store.lock_refresh)
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


class _InProcess(_Engine):
    """One event loop, a manual clock, every host in this process: deterministic."""

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except asyncio.CancelledError:   # the second Ctrl-C
            raise KeyboardInterrupt from None

    def _catch_ctrl_c(self) -> bool:
        """Ctrl-C sets `interrupted` (the play loop then stops) instead of raising; the second cancels the run."""
        loop, main = asyncio.get_running_loop(), asyncio.current_task()

        def on_sigint() -> None:
            if self.interrupted:
                main.cancel()
            else:
                self.stop_requested()
        try:
            loop.add_signal_handler(signal.SIGINT, on_sigint)
        except (ValueError, RuntimeError, NotImplementedError):   # not the main thread: Ctrl-C is not ours
            return False
        return True

    async def _main(self) -> None:
        caught = self._catch_ctrl_c()
        try:
            await self._play()
        finally:
            if caught:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)

    async def _play(self) -> None:
        from lodestore.coordinator import Coordinator
        sc = self.scenario
        budget = None if sc.world.budget == "none" else sc.world.budget
        clock = ManualClock()
        world = World.in_process(self.world_name, backend=sc.world.backend, path=self.path, clock=clock,
                                 shards=sc.world.shards, budget=budget)
        scheduler = Scheduler(clock)
        coordinator = Coordinator(world)

        async def run_tx(req: Any) -> Any:
            try:
                return await coordinator.run(req)
            except Exception as exc:
                return exc

        t0 = clock.now()
        hosts: list[SimHost] = []
        for i in range(self.host_count):
            hosts.append(SimHost(world, sc, i, t0, scheduler=scheduler, run_tx=run_tx, peer=lambda j: hosts[j],
                                 host_of=lambda sid: self.router.placement[sid]))
        step_ms = int(sc.servers.step * 1000)
        end_ms = int(sc.world.duration * 1000)
        boundaries = [0.0] + _fault_boundaries(sc)
        wall0 = time.monotonic()
        t = 0
        while t < end_ms and not self.interrupted:
            # a window edge between two steps takes effect at the step after it (not only on a step's edge)
            while boundaries and boundaries[0] * 1000 <= t:
                world.set_faults(fault_config_at(sc, t / 1000, t0))
                boundaries.pop(0)
            nxt = min(end_ms, t + step_ms)
            for index, batch in self.plan_until(nxt).items():
                hosts[index].apply(batch)
            await scheduler.advance((nxt - t) / 1000)
            self.account(nxt)
            t = nxt
            self.sim_time_s = t / 1000
            for i, host in enumerate(hosts):
                self.collector.add(i, await host.drain())
            self.display.update(self.sim_time_s, self.collector, time.monotonic() - wall0)
        self.play_wall_s = time.monotonic() - wall0
        world.set_faults(FaultConfig())

        async def driven(*coros: Any) -> list:
            """Await `coros` while moving the manual clock (their retries and waits need time to pass)."""
            tasks = [asyncio.ensure_future(c) for c in coros]
            while not all(t.done() for t in tasks):
                await scheduler.advance(1.0)
            return [t.result() for t in tasks]

        for i, drain in enumerate(await driven(*(h.finish() for h in hosts))):
            self.collector.add(i, drain)
        await driven(coordinator.recover())
        self.collector.close_locks()
        final, hot = await driven(hosts[0].peek(self.population()), hosts[0].read_hot(list(self.planner.hot_keys)))
        self.finish_data(final, hot)
        self.display.update(self.sim_time_s, self.collector, time.monotonic() - wall0, final=True)
        world.shutdown()


class _OnRay(_Engine):
    """Storage, coordinator and hosts as Ray actors; the clock runs at `time_scale`."""

    _inflight: list[tuple[int, str, Any]]   # (host, method, ref) of calls sent and not yet collected

    def run(self) -> None:
        import ray
        sc = self.scenario
        started_ray = not ray.is_initialized()
        budget = None if sc.world.budget == "none" else sc.world.budget
        try:
            world = World.start(self.world_name, backend=sc.world.backend, path=self.path,
                                time_scale=sc.world.time_scale, shards=sc.world.shards, budget=budget,
                                address=self.options.address, storage=sc.world.storage)
        except (ConnectionError, ConfigError) as exc:   # no cluster at the address ('auto': none to join)
            if isinstance(exc, ConfigError) and exc.field != "address":
                raise
            raise ConfigError(f"--address {self.options.address}: {exc}") from None
        metrics = _Metrics(sc.world.name)
        try:
            self._play(world, metrics)
        finally:
            world.shutdown()
            if started_ray and self.options.address is None:
                ray.shutdown()

    def _play(self, world: World, metrics: _Metrics) -> None:
        import ray
        from lodestore.storage import pinned, spread_nodes
        sc = self.scenario
        lead_ms = int(_LEAD_S * sc.world.time_scale * 1000)
        world.runtime.call(coordinator_ref(world), "recover")   # the coordinator is up before any host needs it
        nodes = spread_nodes(self.host_count)               # round-robin over the cluster's nodes
        self.host_nodes = nodes
        hosts = self.hosts = [SimHostActor.options(num_cpus=0, max_concurrency=100_000, max_restarts=0,
                                                   **pinned(nodes[i])).remote(world, sc, i, 0)
                              for i in range(self.host_count)]
        ray.get([h.__ray_ready__.remote() for h in hosts])
        t0 = world.now() + lead_ms
        ray.get([h.setup.remote(hosts, t0) for h in hosts])
        end_ms = int(sc.world.duration * 1000)
        boundaries = _fault_boundaries(sc)
        world.set_faults(fault_config_at(sc, 0, t0))
        wall0 = time.monotonic()
        last_drain = 0.0
        self._inflight = []
        try:
            while True:
                now = world.now() - t0
                if now >= end_ms:
                    break
                while boundaries and boundaries[0] * 1000 <= now:
                    world.set_faults(fault_config_at(sc, boundaries.pop(0), t0))
                horizon = min(end_ms, max(now, 0) + lead_ms)
                batches = self.plan_until(horizon)
                new = self._new_placement
                for index, batch in batches.items():
                    self._unresolved[index].update((ev.op_id, ev) for ev in batch if ev.op_id is not None)
                self._send("apply", {i: (batches.get(i, []), new) for i in self._live() if i in batches or new})
                self.account(max(0, min(now, end_ms)))
                self.sim_time_s = max(0.0, now / 1000)
                wall = time.monotonic() - wall0
                if wall - last_drain >= _DRAIN_EVERY_S:
                    last_drain = wall
                    self._send("drain", {i: () for i in self._live() if not self._draining(i)})
                    self.display.update(self.sim_time_s, self.collector, wall)
                self._collect(metrics)
                time.sleep(max(0.0, self.options.tick_s - (time.monotonic() - wall0 - wall)))
        except KeyboardInterrupt:
            self.stop_requested()
        self._collect(metrics, wait=True)
        self.account(min(world.now() - t0, end_ms))
        self.sim_time_s = max(0.0, (world.now() - t0) / 1000)
        self.play_wall_s = time.monotonic() - wall0
        world.set_faults(FaultConfig())
        for i, drain in self._each_host("finish", {i: () for i in self._live()}).items():
            self._take(i, drain, metrics)
        for i in self._live():   # planned for after the stop (Ctrl-C): never run, recorded as unknown to be safe
            self.collector.add_ops(self._unresolved_ops(i, "NotRun"))
        world.runtime.call(coordinator_ref(world), "recover")
        self.collector.close_locks()
        keys = self.population()
        live = self._live()
        if not live:
            raise RuntimeError("every simulator host was lost; nothing is left to read the final data")
        parts = {i: (keys[n::len(live)],) for n, i in enumerate(live)}
        final: dict = {}
        for part in self._each_host("peek", parts, lose=False).values():
            final.update(part)
        hot = self._each_host("read_hot", {live[0]: (list(self.planner.hot_keys),)}, lose=False)[live[0]]
        self.finish_data(final, hot)
        self.display.update(self.sim_time_s, self.collector, time.monotonic() - wall0, final=True)
        for h in hosts:
            ray.kill(h)

    # ------------------------------------------------------------------------- calls the play does not wait for

    def _send(self, method: str, args: dict[int, tuple]) -> None:
        """Call `method` on each host of `args` without waiting: `_collect` takes the answers as they come, so a
        host slow to drain (its statistics wait behind a load that waits for a lock) never holds up the events of
        the next moments for every host."""
        for i, a in args.items():
            self._inflight.append((i, method, getattr(self.hosts[i], method).remote(*a)))

    def _draining(self, index: int) -> bool:
        return any(i == index and method == "drain" for i, method, _ in self._inflight)

    def _collect(self, metrics: _Metrics, wait: bool = False) -> None:
        """Take the answers of `_send`'s calls that came back (with `wait`, of all of them): drains go to the
        collector; a host whose call failed because its actor died is lost."""
        import ray
        if not self._inflight:
            return
        refs = [ref for _, _, ref in self._inflight]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=None if wait else 0)[0])
        calls, self._inflight = self._inflight, []
        for i, method, ref in calls:
            if ref not in ready:
                self._inflight.append((i, method, ref))
                continue
            if i in self.router.lost:
                continue
            try:
                answer = ray.get(ref)
            except ACTOR_FAILURES as exc:
                self._lose_host(i, exc)
                continue
            if method == "drain":
                self._take(i, answer, metrics)

    # ----------------------------------------------------------------------------------------- lost hosts

    def _live(self) -> list[int]:
        return [i for i in range(self.host_count) if i not in self.router.lost]

    def _each_host(self, method: str, args: dict[int, tuple], lose: bool = True) -> dict[int, Any]:
        """Call `method` on each host of `args` at once; a host whose actor died (its node was lost) is lost."""
        import ray
        refs = {i: getattr(self.hosts[i], method).remote(*a) for i, a in args.items()}
        out = {}
        for i, ref in refs.items():
            try:
                out[i] = ray.get(ref)
            except ACTOR_FAILURES as exc:
                if not lose:
                    raise
                self._lose_host(i, exc)
        return out

    def _take(self, index: int, drain: dict, metrics: _Metrics) -> None:
        unresolved = self._unresolved[index]
        for op in drain["ops"]:
            unresolved.pop(op[3], None)
        self.collector.add(index, drain)
        metrics.record(drain, self.collector)

    def _unresolved_ops(self, index: int, why: str) -> list[tuple]:
        """The actions sent to host `index` that it never reported an outcome for, as unknown outcomes."""
        events, self._unresolved[index] = self._unresolved[index], {}
        return [(ev.t, ev.player, ev.server, ev.op_id, ev.kind, "unknown", ev.amount, ev.item, ev.target, why, None)
                for ev in events.values()]

    def _lose_host(self, index: int, exc: BaseException) -> None:
        """Host `index` died with its node: its servers crashed (their sessions are gone unsaved, their locks
        expire, their players reconnect to other servers), what it had not reported is unknown."""
        import ray
        ray.kill(self.hosts[index])   # if it is only unreachable, it must not play on unseen
        self.router.lost.add(index)
        servers = self.router.servers_of(index)
        crashed = self.planner.lose(servers)
        self.collector.lose_host(index, servers, len(crashed), self._unresolved_ops(index, "NodeLost"))
        self.lost_hosts.append({"host": index, "node": self.host_nodes[index], "at_s": round(self.sim_time_s, 3),
                                "servers": crashed, "error": type(exc).__name__})
        self.display.stream.write(f"\nhost {index} lost ({type(exc).__name__}): servers {', '.join(crashed) or '-'} "
                                  f"crashed with it; their players reconnect elsewhere\n")

"""Shrinking a failed run: a much smaller scenario and event list that still fail the same checker the same way.

Owns: `shrink(run_dir, ...)`, the driver of `lodestore shrink`. It reads a failed run's directory (report.json,
scenario.toml, events.json when the run played a given list), names the failure it keeps (`ShrinkTarget`: the checker,
and the shape of its counterexample: its text with keys, ids and numbers blanked, so "coins destroyed" never passes
for "coins created"), then reduces in two phases, every try a whole run in this process (virtual time, no Ray: a
try's outcome is a function of what it runs, so the same run always shrinks to the same result):

1. the scenario's knobs, greedily, each kept only while the run still fails the same way: fewer players (halving
   `players.population`), a shorter run (halving `world.duration`; fault windows are cut to it), fewer servers,
   fewer simulator hosts, fewer fault windows (each dropped in turn), lower rates (every action, join, leave,
   teleport, server and fault rate: first 0, then halved, at most `_HALVINGS` times);
2. the event list of the reduced scenario (the planner's, which depends on its seed only), by delta debugging
   (Zeller's ddmin): first over the players (all of a player's events at once), then over single events. A
   candidate is cut to what is `playable` (`sim._workload`): an event whose premise went with a removed one (the
   actions of a player whose join is gone, anything on a server whose start is gone, a trade whose taker never
   joined the taker's server) is dropped with it; what stays may still meet a player who left or a server that is
   down (as the plan's own events can), and is played as the plan's are: such an action fails as not loaded;
3. tidying: the players the list names renumbered from 0 and its servers from 1 (the population and servers count
   shrink to them), and the run cut soon after its last event, each kept only if the run still fails the same way.

A knob try runs its scenario as `lodestore simulate` would (its planner); an event try plays its list through a
`Script` (`RunOptions.events`), and the phase starts by playing the whole plan as a list, which must fail the same
way (a `Script` of the plan gives the plan's own history). A try that breaks the harness counts as not failing. The
final run (the smallest failing candidate, played again with its report written) is outside the budget.

Output, in `out` (default RUN_DIR/shrunk): the final run's report (report.json, report.html, history.json,
scenario.toml, events.json: `lodestore replay OUT` plays them and checks the digest), and the shrink's own log:
shrink.json (the failure, before and after, every try with its verdict and wall time) and shrink.log (the same
lines as the progress shown, one per try). Bounded by a budget of tries (deterministic) or of wall seconds (not).

Never does: run on Ray, pace a run to wall time, serve Open Cloud, or write anywhere but `out` and a temporary
directory of its own (each try's world file, deleted after it).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, TextIO

from lodestore.sim._checkers import CheckResult
from lodestore.sim._runner import RunOptions, RunResult, _default_replay_out, simulate
from lodestore.sim._scenario import Scenario, load_scenario, parse_scenario, scenario_toml
from lodestore.sim._workload import Planned, Planner, events_from_json, playable, player_key
from lodestore.storage import ConfigError

__all__ = ["shrink", "ShrinkResult", "ShrinkTry", "ShrinkTarget", "failure_shape", "DEFAULT_BUDGET"]

DEFAULT_BUDGET = 150
"""Tries a shrink makes when no budget is given."""

_HALVINGS = 3
"""How many times one rate is halved at most (after 0 did not keep the failure)."""

_SHAPE = re.compile(r"'[^']*'|\"[^\"]*\"|\[[^\]]*\]|-?\d+(?:\.\d+)?")


def failure_shape(counterexample: str | None) -> str:
    """How a checker failed, without the particulars: the counterexample up to its first colon (when it has one),
    its quoted values, bracketed lists and numbers blanked. "coins destroyed: final total 2469 outside expected
    [2480, 2480] (...)" has the shape "coins destroyed"; "double lock on 'player_00003': ..." has "double lock on
    '…'"."""
    text = counterexample or ""
    head = text.split(":", 1)[0] if ":" in text else text

    def blank(m: re.Match) -> str:
        s = m.group(0)
        return "'…'" if s[0] in "'\"" else "[…]" if s[0] == "[" else "N"
    return _SHAPE.sub(blank, head).strip()


@dataclass(frozen=True)
class ShrinkTarget:
    """The failure a shrink keeps: the checker's name and the shape of its counterexample (`failure_shape`)."""

    checker: str
    shape: str
    counterexample: str

    def found_in(self, checks: Sequence[CheckResult]) -> CheckResult | None:
        """The check of `checks` that fails this way, or None."""
        for check in checks:
            if check.name == self.checker and not check.ok and failure_shape(check.counterexample) == self.shape:
                return check
        return None


@dataclass(frozen=True)
class ShrinkTry:
    """One try: what it changed, and what the run said (`verdict`: "fails the same way", "passes", "fails
    otherwise" with the other failure in `detail`, or "error" with the exception)."""

    n: int
    phase: str          # "knobs", "players", "events" or "tidy"
    change: str
    verdict: str
    kept: bool
    wall_s: float
    events: int         # events the try played
    detail: str | None = None


@dataclass(frozen=True)
class ShrinkResult:
    """A finished shrink: where its output is, the failure kept, the reduced scenario and events (what
    `lodestore replay out` plays), every try, and the final run."""

    out: Path
    target: ShrinkTarget
    scenario: Scenario
    hosts: int
    events: tuple[Planned, ...]
    tries: tuple[ShrinkTry, ...]
    wall_s: float
    budget_spent: bool
    final: RunResult

    @property
    def reproduced(self) -> bool:
        """The final run fails the same way (it is the last kept try, played again with its report written)."""
        return self.target.found_in(self.final.checks) is not None


class _Spent(Exception):
    """The budget is used up: the shrink stops where it is and keeps the smallest failing run so far."""


@dataclass(frozen=True)
class _Candidate:
    scenario: Scenario
    hosts: int
    events: tuple[Planned, ...] | None = None   # None: the planner's

    def played(self) -> tuple[Planned, ...]:
        if self.events is not None:
            return self.events
        return tuple(playable(Planner(self.scenario), self.scenario.players.population))


def _read_run(run_dir: Path, checker: str | None) -> tuple[Scenario, dict, ShrinkTarget, tuple[Planned, ...] | None]:
    """The run's scenario, report, the failure to keep and its event list (when it played one); ConfigError when
    `run_dir` is not a run, or a run that did not fail a checker."""
    report_path, scenario_path = run_dir / "report.json", run_dir / "scenario.toml"
    if not run_dir.is_dir() or not report_path.is_file() or not scenario_path.is_file():
        raise ConfigError(f"{run_dir}: not a run directory (a run's directory holds report.json and scenario.toml)")
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{report_path}: not a run's report: {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("checks"), list) or "run" not in report:
        raise ConfigError(f"{report_path}: not a finished run's report (no checks)")
    scenario = load_scenario(scenario_path)
    failed = [c for c in report["checks"] if isinstance(c, dict) and not c.get("ok", True)]
    if not failed:
        raise ConfigError(f"{run_dir}: the run passed every checker ({', '.join(c['name'] for c in report['checks'])}"
                          f"); shrink keeps a checker's failure, so there is nothing to shrink")
    if checker is not None:
        chosen = [c for c in failed if c["name"] == checker]
        if not chosen:
            raise ConfigError(f"--checker {checker}: that checker did not fail in {run_dir} (failed: "
                              f"{', '.join(c['name'] for c in failed)})")
        failed = chosen
    first = failed[0]
    failure = ShrinkTarget(first["name"], failure_shape(first.get("counterexample")), first.get("counterexample") or "")
    events = None
    events_path = run_dir / "events.json"
    if events_path.is_file():
        try:
            data = json.loads(events_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{events_path}: not an event list: {exc}") from None
        events = tuple(events_from_json(data, str(events_path)))
    return scenario, report, failure, events


def _quiet(scenario: Scenario) -> Scenario:
    """The scenario as a try runs it: as fast as it goes (no pacing, no Open Cloud server), its world file chosen
    by the try."""
    return dataclasses.replace(scenario, world=dataclasses.replace(scenario.world, path=None, time_scale=None),
                               serve=dataclasses.replace(scenario.serve, port=None))


def _valid(scenario: Scenario) -> Scenario | None:
    """`scenario` if it is one a scenario file can say (read back from its TOML), else None."""
    try:
        return parse_scenario(scenario_toml(scenario), scenario.source)
    except ConfigError:
        return None


class _Shrinker:
    def __init__(self, failure: ShrinkTarget, tries: int | None, seconds: float | None, stream: TextIO,
                 scratch: Path) -> None:
        self.failure = failure
        self.max_tries = tries
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self.stream = stream
        self.scratch = scratch
        self.tries: list[ShrinkTry] = []
        self.lines: list[str] = []
        self._seen: dict[tuple, bool] = {}
        self.spent = False
        self.best: _Candidate | None = None   # the last candidate that failed the same way

    def say(self, line: str) -> None:
        self.lines.append(line)
        self.stream.write(line + "\n")
        self.stream.flush()

    # ----------------------------------------------------------------------------------------------- a try

    def fails(self, candidate: _Candidate, phase: str, change: str) -> bool:
        """Run `candidate` in process: whether it fails the same way (a candidate played before answers as then)."""
        events = candidate.events   # None: the planner's, played as a run of the scenario plays them
        seen = (scenario_toml(candidate.scenario), candidate.hosts, events)
        if seen in self._seen:
            if self._seen[seen]:
                self.best = candidate
            return self._seen[seen]
        if (self.max_tries is not None and len(self.tries) >= self.max_tries) or (
                self.deadline is not None and time.monotonic() >= self.deadline):
            self.spent = True
            raise _Spent
        n = len(self.tries) + 1
        world = self.scratch / f"try-{n}"
        scenario = dataclasses.replace(candidate.scenario, world=dataclasses.replace(
            candidate.scenario.world, path=str(world / "world.db")))
        detail, played = None, len(events) if events is not None else 0
        wall0 = time.monotonic()
        try:
            result = simulate(scenario, RunOptions(engine="in-process", hosts=candidate.hosts, write_files=False,
                                                   progress=False, stream=io.StringIO(), events=events))
        except KeyboardInterrupt:
            raise
        except Exception as exc:   # a try that breaks the harness keeps nothing; the shrink goes on
            verdict, kept, detail = "error", False, f"{type(exc).__name__}: {exc}"
        else:
            if result.report["run"]["stopped_early"]:   # Ctrl-C during the try: stop shrinking
                self.spent = True
                raise _Spent
            played = result.report["run"]["events_planned"]
            kept = self.failure.found_in(result.checks) is not None
            other = [c for c in result.checks if not c.ok]
            verdict = "fails the same way" if kept else "fails otherwise" if other else "passes"
            if other and not kept:
                detail = f"{other[0].name}: {failure_shape(other[0].counterexample)}"
        finally:
            shutil.rmtree(world, ignore_errors=True)
        wall = time.monotonic() - wall0
        self.tries.append(ShrinkTry(n, phase, change, verdict, kept, round(wall, 3), played, detail))
        self.say(f"try {n:>3}  {phase:<7} {change}: {verdict}{f' ({detail})' if detail else ''}  "
                 f"[{played} events, {wall:.2f} s]")
        self._seen[seen] = kept
        if kept:
            self.best = candidate
        return kept

    # --------------------------------------------------------------------------------------- phase 1: knobs

    def knobs(self, best: _Candidate) -> _Candidate:
        """Greedy passes over the knobs, in order, until a pass changes nothing: each knob is made smaller again
        while that keeps the failure (the knobs are read afresh from the best candidate after every change)."""
        halved: dict[str, int] = {}
        changed = True
        while changed:
            changed = False
            for name in list(dict.fromkeys(name for name, _ in _knobs(best, halved))):
                again = True
                while again:
                    again = False
                    for knob, make in [k for k in _knobs(best, halved) if k[0] == name]:
                        made = make()
                        if made is not None and self.fails(made[1], "knobs", made[0]):
                            best, changed, again = made[1], True, True
                            halved[name] = halved.get(name, 0) + 1
                            break
        return best

    # -------------------------------------------------------------------------------------- phase 2: events

    def events(self, best: _Candidate) -> _Candidate:
        events = best.played()
        full = dataclasses.replace(best, events=events)
        if not self.fails(full, "events", f"the plan as a list of {len(events)} events"):
            self.say("the plan played as a list does not fail the same way: no event shrinking")
            return best
        best = full
        players = sorted({ev.player for ev in events if ev.player is not None})

        def keep_players(subset: Sequence[str]) -> tuple[Planned, ...]:
            chosen = set(subset)
            return tuple(playable([ev for ev in best.events if ev.player is None or ev.player in chosen],
                                  best.scenario.players.population))

        kept_players = _ddmin(players, lambda subset: self.fails(
            dataclasses.replace(best, events=keep_players(subset)), "players",
            f"{len(subset)} of {len(players)} players"))
        best = dataclasses.replace(best, events=keep_players(kept_players))

        def cut(subset: Sequence[Planned]) -> tuple[Planned, ...]:
            return tuple(playable(subset, best.scenario.players.population))

        total = len(best.events)
        kept = _ddmin(list(best.events), lambda subset: self.fails(
            dataclasses.replace(best, events=cut(subset)), "events", f"{len(cut(subset))} of {total} events"))
        return self.tidy(dataclasses.replace(best, events=cut(kept)))

    def tidy(self, best: _Candidate) -> _Candidate:
        """What the list leaves out of the scenario: the players it names renumbered from 0 (the population shrinks
        to them) and its servers from 1 (the servers count to those it starts), and the run cut soon after its last
        event."""
        events = best.events or ()
        players = list(dict.fromkeys(ev.player for ev in events if ev.player is not None))
        names = {old: player_key(i) for i, old in enumerate(players)}
        servers = {sid: f"server_{i + 1:04d}" for i, sid in enumerate(
            dict.fromkeys(ev.server for ev in events if ev.kind == "start"))}
        renamed = tuple(dataclasses.replace(ev, player=names.get(ev.player, ev.player),
                                            server=servers.get(ev.server, ev.server),
                                            target_server=servers.get(ev.target_server, ev.target_server),
                                            target=names.get(ev.target, ev.target) if ev.kind == "trade"
                                            else ev.target) for ev in events)
        sc = best.scenario
        started = len(servers)
        tidier = _valid(dataclasses.replace(
            sc, players=dataclasses.replace(sc.players, population=max(1, len(players))),
            servers=dataclasses.replace(sc.servers, count=max(1, started))))
        if tidier is not None and (renamed != events or tidier != sc):
            candidate = _Candidate(tidier, best.hosts, renamed)
            what = ["players and servers renumbered",
                    f"players.population {sc.players.population} -> {tidier.players.population}"
                    if tidier.players.population != sc.players.population else "",
                    f"servers.count {sc.servers.count} -> {tidier.servers.count}"
                    if tidier.servers.count != sc.servers.count else ""]
            if self.fails(candidate, "tidy", ", ".join(w for w in what if w)):
                best = candidate
        sc = best.scenario
        last_s = max((ev.t for ev in best.events or ()), default=0) / 1000
        duration = max(2 * sc.servers.step, 10.0, math.ceil((last_s + sc.servers.step) / sc.servers.step)
                       * sc.servers.step)
        if duration < sc.world.duration:
            faults = tuple(dataclasses.replace(w, end=min(w.end, duration)) for w in sc.faults if w.start < duration)
            shorter = _valid(dataclasses.replace(sc, world=dataclasses.replace(sc.world, duration=duration),
                                                 faults=faults))
            if shorter is not None:
                candidate = dataclasses.replace(best, scenario=shorter)
                if self.fails(candidate, "tidy", f"world.duration {sc.world.duration:g} -> {duration:g} s (just "
                                                 f"after the last event)"):
                    best = candidate
        return best


def _ddmin(items: list, fails: Callable[[list], bool]) -> list:
    """Zeller's ddmin: a 1-minimal sublist of `items` (which fails) that still fails: try each of n chunks, then
    each complement, doubling n when neither fails."""
    n = 2
    while len(items) >= 2:
        size = -(-len(items) // n)
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        for chunk in chunks:
            if fails(chunk):
                items, n = chunk, 2
                break
        else:
            for i in range(len(chunks)):
                rest = [x for j, c in enumerate(chunks) if j != i for x in c]
                if fails(rest):
                    items, n = rest, max(n - 1, 2)
                    break
            else:
                if n >= len(items):
                    break
                n = min(len(items), 2 * n)
    if len(items) == 1 and fails([]):
        items = []
    return items


def _knobs(best: _Candidate, halved: dict[str, int]) -> Iterator[tuple[str, Callable[[], tuple[str, _Candidate]
                                                                                  | None]]]:
    """Each knob's next smaller setting, as (knob, make): make() answers (what changed, the candidate) or None when
    the knob is as small as it goes (or the result is no valid scenario)."""
    sc = best.scenario

    def candidate(change: str, **sections) -> tuple[str, _Candidate] | None:
        new = _valid(dataclasses.replace(sc, **sections))
        return None if new is None else (change, dataclasses.replace(best, scenario=new))

    world, servers, players = sc.world, sc.servers, sc.players
    if players.population > 1:
        half = players.population // 2
        yield "population", lambda: candidate(f"players.population {players.population} -> {half}",
                                              players=dataclasses.replace(players, population=half))
    floor = max(2 * servers.step, 10.0)
    if world.duration / 2 >= floor:
        duration = world.duration / 2
        faults = tuple(dataclasses.replace(w, end=min(w.end, duration)) for w in sc.faults if w.start < duration)
        yield "duration", lambda: candidate(f"world.duration {world.duration:g} -> {duration:g} s",
                                            world=dataclasses.replace(world, duration=duration), faults=faults)
    if servers.count > 1:
        half_servers = servers.count // 2
        yield "servers", lambda: candidate(f"servers.count {servers.count} -> {half_servers}",
                                           servers=dataclasses.replace(servers, count=half_servers))
    if best.hosts > 1:
        hosts = best.hosts // 2
        yield "hosts", lambda: (f"hosts {best.hosts} -> {hosts}", dataclasses.replace(best, hosts=hosts))
    for i in range(len(sc.faults)):
        yield f"fault{i}", lambda i=i: candidate(f"drop fault window {i} ({sc.faults[i].start:g}..{sc.faults[i].end:g}"
                                                 f" s)", faults=sc.faults[:i] + sc.faults[i + 1:])
    rates = sc.players.actions_per_minute
    for f in dataclasses.fields(rates):
        value = getattr(rates, f.name)
        yield from _rate(f"players.actions_per_minute.{f.name}", value, halved, lambda v, name=f.name: candidate(
            "", players=dataclasses.replace(players, actions_per_minute=dataclasses.replace(rates, **{name: v}))))
    for name in ("join_rate", "leave_rate", "teleport_rate"):
        yield from _rate(f"players.{name}", getattr(players, name), halved, lambda v, name=name: candidate(
            "", players=dataclasses.replace(players, **{name: v})), zero=name != "join_rate")
    for name in ("start_rate", "stop_rate", "crash_rate"):
        yield from _rate(f"servers.{name}", getattr(servers, name), halved, lambda v, name=name: candidate(
            "", servers=dataclasses.replace(servers, **{name: v})))
    for i, w in enumerate(sc.faults):
        def window(i: int, **fields) -> tuple[str, _Candidate] | None:
            faults = sc.faults[:i] + (dataclasses.replace(sc.faults[i], **fields),) + sc.faults[i + 1:]
            return candidate("", faults=faults)
        for name in ("ambiguous_write_rate", "server_crash_rate", "lock_stall_rate"):
            yield from _rate(f"faults[{i}].{name}", getattr(w, name), halved,
                             lambda v, i=i, name=name: window(i, **{name: v}))
        for table in ("error_rate", "memorystore_error_rate"):
            for key, value in sorted(getattr(w, table).items()):
                yield from _rate(f"faults[{i}].{table}.{key}", value, halved, lambda v, i=i, table=table, key=key:
                                 window(i, **{table: {**getattr(sc.faults[i], table), key: v}}))


def _rate(label: str, value: float, halved: dict[str, int], make: Callable[[float], tuple[str, _Candidate] | None],
          zero: bool = True) -> Iterator[tuple[str, Callable]]:
    """A rate's smaller settings: 0 (when `zero`), then half, at most `_HALVINGS` times."""
    if value <= 0:
        return

    def named(v: float) -> Callable[[], tuple[str, _Candidate] | None]:
        def make_named() -> tuple[str, _Candidate] | None:
            made = make(v)
            return None if made is None else (f"{label} {value:g} -> {v:g}", made[1])
        return make_named
    if zero and halved.get(label, 0) == 0:
        yield label, named(0.0)
    if halved.get(label, 0) < _HALVINGS:
        yield label, named(value / 2)


def shrink(run_dir: str | Path, *, budget: int | None = None, budget_seconds: float | None = None,
           out: str | Path | None = None, checker: str | None = None, stream: TextIO | None = None) -> ShrinkResult:
    """Shrink the failed run in `run_dir` (see the module docstring) and write the result to `out` (default
    RUN_DIR/shrunk, -2, -3, ... when taken). `budget`: tries at most (default `DEFAULT_BUDGET` when neither is
    given); `budget_seconds`: wall seconds at most (then the result depends on the machine's speed). `checker`: the
    failing checker to keep (default: the first that failed). Progress, one line per try, goes to `stream`
    (default stdout). ConfigError when `run_dir` is not a failed run or an argument is bad.

        >>> result = shrink("lodestore-runs/20260101-120000-storm", budget=100)
        >>> result.scenario.players.population, len(result.events), result.reproduced
    """
    run_dir = Path(run_dir)
    if budget is not None and budget_seconds is not None:
        raise ConfigError("give a budget of tries or of seconds, not both")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ConfigError(f"budget must be a number of tries >= 1, got {budget!r}")
    if budget_seconds is not None and (isinstance(budget_seconds, bool) or not isinstance(budget_seconds, (int, float))
                                       or not budget_seconds > 0 or budget_seconds == float("inf")):
        raise ConfigError(f"budget_seconds must be a number of seconds > 0, got {budget_seconds!r}")
    if budget is None and budget_seconds is None:
        budget = DEFAULT_BUDGET
    scenario, report, failure, run_events = _read_run(run_dir, checker)
    out = Path(out) if out is not None else _default_replay_out(run_dir, "shrunk")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not an empty directory")
    stream = stream or sys.stdout
    wall0 = time.monotonic()
    hosts = int(report["run"].get("hosts") or 1)
    original = _Candidate(_quiet(scenario), hosts, run_events)
    with tempfile.TemporaryDirectory(prefix="lodestore-shrink-") as scratch:
        shrinker = _Shrinker(failure, budget, budget_seconds, stream, Path(scratch))
        shrinker.say(f"shrinking {run_dir}: keeping {failure.checker} failing as {failure.shape!r}")
        shrinker.say(f"from {_describe(original, report['run'].get('events_planned'))}; budget: "
                     f"{f'{budget} tries' if budget is not None else f'{budget_seconds:g} s'}")
        best = original
        try:
            if run_events is None:   # a played list keeps its scenario: its events would not fit another
                best = shrinker.knobs(best)
            best = shrinker.events(best)
        except _Spent:
            best = shrinker.best or original
            shrinker.say("budget spent: keeping the smallest run that failed the same way so far")
    best = dataclasses.replace(best, events=best.played())
    shrinker.say(f"to {_describe(best)}")
    final = simulate(best.scenario, RunOptions(out=out, engine="in-process", hosts=best.hosts, progress=False,
                                               stream=io.StringIO(), events=best.events))
    wall = time.monotonic() - wall0
    result = ShrinkResult(out, failure, best.scenario, best.hosts, best.events, tuple(shrinker.tries), round(wall, 3),
                          shrinker.spent, final)
    found = failure.found_in(final.checks)
    shrinker.say(f"final run: {'fails the same way' if found else 'does NOT fail the same way'}"
                 f"{f': {found.counterexample}' if found else ''}; digest {final.report['digest']}")
    shrinker.say(f"{len(shrinker.tries)} tries in {wall:.1f} s; `lodestore replay {out}` plays it again")
    _write_log(out, run_dir, report, failure, original, result, shrinker.lines)
    return result


def _describe(c: _Candidate, events: int | None = None) -> str:
    summary = _summary(c, events)
    return (f"{summary['population']} players, {summary['servers']} servers, {summary['duration_s']:g} s, "
            f"{summary['fault_windows']} fault windows, {summary['hosts']} hosts, {summary['events']} events")


def _summary(c: _Candidate, events: int | None = None) -> dict:
    """The figures a shrink makes smaller; `events`: the candidate's event count when known (else counted)."""
    sc = c.scenario
    return {"population": sc.players.population, "servers": sc.servers.count, "duration_s": sc.world.duration,
            "fault_windows": len(sc.faults), "hosts": c.hosts,
            "events": events if events is not None else len(c.played())}


def _write_log(out: Path, run_dir: Path, report: dict, failure: ShrinkTarget, original: _Candidate,
               result: ShrinkResult, lines: list[str]) -> None:
    final = _Candidate(result.scenario, result.hosts, result.events)
    log = {"format": 1, "run_dir": str(run_dir), "run_digest": report.get("digest"),
           "failure": dataclasses.asdict(failure),
           "original": _summary(original, report["run"].get("events_planned")), "shrunk": _summary(final),
           "reproduced": result.reproduced, "digest": result.final.report["digest"], "wall_s": result.wall_s,
           "budget_spent": result.budget_spent, "tries": [dataclasses.asdict(t) for t in result.tries]}
    (out / "shrink.json").write_text(json.dumps(log, indent=1), encoding="utf-8")
    (out / "shrink.log").write_text("\n".join(lines) + "\n", encoding="utf-8")

"""`lodestore timeline RUN_DIR KEY`: one key's story in a finished run, as JSON and as a self-contained HTML page.

Owns: reading a run's directory (report.json, history.json with its annotations, scenario.toml, world.db) for one
key (`build_timeline`), the page (`render_html`: an SVG time axis with a lane per server that held the key's lock,
one for the DataStore versions and one for the player's actions, fault windows shaded, the checkers'
counterexamples marked; tables below), writing both (`write_timeline`), the keys the checkers name
(`keys_named`) and the timelines of a run's report (`write_timelines`, `timeline_href`), and the sub-command.

What it shows comes from what the run kept:
- lock holds from the history's `LockEvent`s (each session's refreshes folded into its last one, so a hold shows
  its start, its last renewal, the TTL window that renewal bought, and how it ended);
- the actions acknowledged to the player from its `OpEvent`s, with each one's error code and a trade's transaction
  outcome from the history's "annotations" (`Collector.annotations`); whether each is in the final ledger;
- server starts, stops, crashes and stalls (annotations), and the scenario's fault windows;
- the DataStore versions the world file still keeps, read offline as `lodestore inspect` reads them (a record's
  transaction resolved by its marker), each with its diff from the one before. The emulator keeps, like Roblox,
  the first version of each UTC hour and the current one: a write that replaced a version of the same hour leaves
  no trace in the file, so a run shorter than an hour shows few versions;
- where each failing checker's counterexample sits, when it names this key.

Never does: run a simulation, write into the run's files other than the timeline's own, or write the world file
(it is opened through the emulator, read only, as `inspect` opens it). Request-level faults a store retried away
are not in the history; only the failures that reached an action are.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import html
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lodestore.actors import RECORDS_PREFIX
from lodestore.actors import records as rec
from lodestore.sim._inspect import InspectError, _Inspector
from lodestore.sim._scenario import load_scenario
from lodestore.storage import REQUEST_FIELDS, ConfigError, virtual

__all__ = ["TimelineError", "TIMELINE_FORMAT", "build_timeline", "render_html", "write_timeline", "write_timelines",
           "keys_named", "timeline_href", "add_parser", "USAGE"]

TIMELINE_FORMAT = 1
"""Version of the timeline dict (``timeline["format"]``)."""
USAGE = 2
"""Exit status for a bad directory or key."""
MAX_REPORT_TIMELINES = 20
"""At most this many timelines are written with a run's report (the first keys the checkers name, sorted); the
page lists the others with the command that makes them."""

_END_STATES = {"released": "CLOSED", "lost": "LOCK_LOST", "crashed": "CRASHED", "vanished": "VANISHED"}
_KEY_REPR = r"('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"
_LEDGER_PROBLEM = re.compile(r"'(?P<op>[^']+)'.*? ledger of " + _KEY_REPR)


class TimelineError(InspectError):
    """A run directory or key `timeline` cannot read: one line, and `status` the exit status (USAGE). An
    `InspectError` (it carries its message and status the same way) so that a caller of both catches one type."""

    def __init__(self, message: str, status: int = USAGE) -> None:
        super().__init__(message, status)


# ------------------------------------------------------------------------------------------------ the run's files


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TimelineError(f"{path.parent} is not a finished run's directory: no {path.name} in it") from None
    except (OSError, ValueError) as exc:
        raise TimelineError(f"cannot read {path}: {exc}") from None


_WRITES = frozenset({"set", "update", "increment", "remove"})   # the raw requests' DataStore writes


class _Run:
    """A run's directory, read once: its report, history events, annotations and scenario."""

    def __init__(self, run_dir: Any, report: Mapping[str, Any] | None = None) -> None:
        if not isinstance(run_dir, (str, Path)) or not str(run_dir):
            raise TimelineError(f"RUN_DIR must be a directory path, got {run_dir!r}")
        self.dir = Path(run_dir)
        if not self.dir.is_dir():
            raise TimelineError(f"no such run directory: {self.dir}")
        self.report = dict(report) if report is not None else _read_json(self.dir / "report.json")
        history = _read_json(self.dir / "history.json")
        if not isinstance(history, dict) or not isinstance(history.get("events"), list):
            raise TimelineError(f"{self.dir / 'history.json'} is not a run's history (no events list)")
        self.events: list[dict] = [e for e in history["events"] if isinstance(e, dict)]
        raw = history.get("requests")
        self._requests: list[list] = [r for r in raw if isinstance(r, list)] if isinstance(raw, list) else []
        annotations = history.get("annotations")
        self.annotations: dict = annotations if isinstance(annotations, dict) else {}
        try:
            self.scenario = load_scenario(self.dir / "scenario.toml")
        except (ConfigError, OSError) as exc:
            raise TimelineError(f"cannot read {self.dir / 'scenario.toml'}: {exc}") from None
        self.world = self.dir / "world.db"
        world_path = (self.report.get("run") or {}).get("world_path")
        if not self.world.exists() and isinstance(world_path, str) and Path(world_path).exists():
            self.world = Path(world_path)
        self._by_key: dict[str, list[dict]] | None = None
        self._writes_by_key: dict[str, list[dict]] | None = None

    def events_of(self, key: str) -> list[dict]:
        """The lock and op events that touch `key` (a trade touches both its keys), in recording order; the
        history is indexed once, so that a report's many timelines read it once."""
        if self._by_key is None:
            self._by_key = {}
            for e in self.events:
                for k in {e.get("key"), e.get("counterparty")}:
                    if isinstance(k, str):
                        self._by_key.setdefault(k, []).append(e)
        return self._by_key.get(key, [])

    def writes_of(self, key: str) -> list[dict]:
        """The DataStore writes of `key` among the raw requests (`REQUEST_FIELDS` rows), in recording order; indexed
        once, as `events_of` is, so that a report's many timelines scan the requests once."""
        if self._writes_by_key is None:
            self._writes_by_key = {}
            for r in self._requests:
                if len(r) != len(REQUEST_FIELDS):
                    continue
                f = dict(zip(REQUEST_FIELDS, r))
                if f["service"] == "ds" and f["call"] in _WRITES:
                    self._writes_by_key.setdefault(f["key"], []).append(f)
        return self._writes_by_key.get(key, [])

    def keys(self) -> list[str]:
        self.events_of("")
        return sorted(self._by_key)


# ------------------------------------------------------------------------------------------------ what the checks name


def _problem_keys(text: str) -> tuple[str | None, str | None]:
    """(op id, key) of one acknowledged_writes problem line, or (None, None)."""
    match = _LEDGER_PROBLEM.search(text)
    if match is None:
        return None, None
    try:
        return match.group("op"), ast.literal_eval(match.group(2))
    except (ValueError, SyntaxError):
        return None, None


def _moments(checks: Sequence[Any]) -> list[dict[str, Any]]:
    """Every key a failing check names, with what it says there: {"check", "key", "text", and "op_id", "item",
    "from"/"to" (ms) where the check gives one}. The report keeps only the first entries of a long list (then
    "... N more"), so these are the keys of the entries it kept."""
    out: list[dict[str, Any]] = []
    for check in checks:
        if not isinstance(check, Mapping) or check.get("ok") is not False:
            continue
        name, details = check.get("name"), check.get("details") or {}
        if name == "acknowledged_writes":
            for text in details.get("problems", ()):
                op_id, key = _problem_keys(str(text))
                if key is not None:
                    out.append({"check": name, "key": key, "text": str(text), "op_id": op_id})
        elif name == "single_holder":
            for o in details.get("overlaps", ()):
                if not isinstance(o, Mapping):   # "... N more": the report keeps the first few
                    continue
                a, b = o.get("first", {}), o.get("second", {})
                text = (f"sessions {a.get('session')!r} (server {a.get('server')!r}) and {b.get('session')!r} "
                        f"(server {b.get('server')!r}) both hold the lock over {o.get('from')}..{o.get('to')} ms")
                out.append({"check": name, "key": o.get("key"), "text": text, "from": o.get("from"),
                            "to": o.get("to")})
        elif name == "no_duplicate_items":
            for item, keys in (details.get("duplicated") or {}).items():
                for key in dict.fromkeys(keys) if isinstance(keys, list) else ():   # twice in one inventory: once
                    out.append({"check": name, "key": key, "text": f"item {item!r} is held by {list(keys)}",
                                "item": item})
        elif name == "conservation":
            for key in details.get("negative", ()):
                out.append({"check": name, "key": key, "text": f"key {key!r} ends with a negative balance"})
    return [m for m in out if isinstance(m.get("key"), str)]


def keys_named(checks: Sequence[Any]) -> list[str]:
    """The keys the failing checks of a report (its "checks" list) name, sorted: an acknowledged write lost or a
    failed, phantom or duplicated op in a key's ledger, a key two sessions held at once, a key holding a
    duplicated item, a key with a negative balance. A check that names no key (coins created or destroyed in
    total) adds none."""
    return sorted({m["key"] for m in _moments(checks)})


def _file_stem(key: str) -> str:
    """A file name for `key`: the key itself when it is plain, else its plain characters and a short hash."""
    plain = re.sub(r"[^A-Za-z0-9._-]", "_", key)[:80]
    if plain == key and not key.startswith("."):
        return key
    return f"{plain}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def timeline_href(key: str) -> str:
    """Where a run's report links `key`'s timeline, relative to the run's directory."""
    return f"timelines/{_file_stem(key)}.html"


# ------------------------------------------------------------------------------------------------ the timeline


def _holds(events: list[dict]) -> list[dict[str, Any]]:
    """The key's holds, one per session, in time order: server, session, start, last renewal, TTL, expiry (the
    last renewal + TTL), end and how it ended, and its states. As `check_single_holder` counts them: after
    "crashed", or with no end event, the hold lasts until its expiry."""
    holds: list[dict[str, Any]] = []
    open_: dict[str, dict[str, Any]] = {}   # session -> its hold not ended yet
    for e in sorted(events, key=lambda e: e["t"]):
        kind, t = e["kind"], e["t"]
        hold = open_.get(e["session"])
        if kind in ("acquired", "refreshed"):
            if hold is None:   # a refresh with no acquire still counts as holding from now on, as the checker says
                hold = open_[e["session"]] = {"server": e["server"], "session": e["session"], "start": t,
                                              "renewed": t, "ttl_ms": e.get("ttl_ms") or 0, "end": None,
                                              "ended": None, "states": [{"t": t, "state": "ACTIVE"}]}
                holds.append(hold)
            else:
                hold["renewed"] = t
                hold["ttl_ms"] = e.get("ttl_ms") or hold["ttl_ms"]
                hold["states"].append({"t": t, "state": "ACTIVE", "note": "refreshed (the last refresh)"})
        elif hold is not None:
            del open_[e["session"]]
            hold["ended"], hold["end"] = kind, t
            hold["states"].append({"t": t, "state": _END_STATES.get(kind, kind.upper())})
    for hold in holds:
        hold["expires"] = hold["renewed"] + hold["ttl_ms"]
        if hold["ended"] in (None, "crashed"):
            hold["end"] = hold["expires"]
        hold["end"] = max(hold["start"], hold["end"])
    return sorted(holds, key=lambda h: (h["start"], h["session"]))


def _diff(before: Any, after: Any) -> dict[str, Any]:
    """What changed from one version's data to the next: coins, items and ledger entries added and removed."""
    def part(data: Any, name: str) -> Any:
        return data.get(name) if isinstance(data, dict) else None

    def added(a: Any, b: Any) -> list:
        a, b = list(a or ()), list(b or ())
        left = list(a)
        out = []
        for x in b:
            if x in left:
                left.remove(x)
            else:
                out.append(x)
        return out

    coins_a, coins_b = part(before, "coins"), part(after, "coins")
    coins = (coins_b or 0) - (coins_a or 0) if isinstance(coins_b, int) or isinstance(coins_a, int) else None
    return {"coins": coins,
            "items_added": added(part(before, "items"), part(after, "items")),
            "items_removed": added(part(after, "items"), part(before, "items")),
            "ops_added": added(part(before, "ledger"), part(after, "ledger")),
            "ops_removed": added(part(after, "ledger"), part(before, "ledger"))}


def _versions(run: _Run, key: str, t0: int, inspector: Any) -> tuple[list[dict[str, Any]], str]:
    """The versions the world file keeps of `key`, oldest first, and a note saying what they are."""
    if inspector is None:
        why = (f"the world file {run.world} is missing" if run.scenario.world.backend == "sqlite" else
               "no world file (a memory backend run)")
        return [], f"{why}: the DataStore versions are not known; the actions show what was acknowledged"
    name = run.scenario.store.name
    datastore = RECORDS_PREFIX + name if RECORDS_PREFIX + name in inspector.summary.stores else name
    if datastore not in inspector.summary.stores:
        return [], f"the world file has no DataStore {datastore!r}"
    target = inspector.resolve(datastore)
    ds = inspector.datastore(datastore)
    out: list[dict[str, Any]] = []
    previous: Any = None
    for info in reversed(inspector.versions(ds, key)):
        entry: dict[str, Any] = {"version": info.version, "t": info.created_time - t0,
                                 "created_time": info.created_time, "deleted": info.is_deleted, "session": None,
                                 "transaction": None, "data": None}
        if not info.is_deleted:
            value, _ = ds.get_version(key, info.version)
            if target.kind == "records" and rec.is_record(value):
                try:
                    entry["data"], entry["transaction"] = inspector.read_record(target, key, value)
                except InspectError as exc:
                    entry["note"] = str(exc)
                entry["session"] = value.get("session")
            else:
                entry["data"] = value
        entry["diff"] = _diff(previous, entry["data"])
        previous = entry["data"]
        out.append(entry)
    note = (f"DataStore {datastore!r}: the versions the world file keeps (the first of each UTC hour and the "
            f"current one; a write that replaced a version of the same hour left none, but every write is listed "
            f"from the run's raw requests)")
    return out, note


def _writes(run: _Run, key: str) -> list[dict[str, Any]]:
    """Every DataStore write of `key` the run's raw requests record (`history.json`'s `requests`, see
    `storage.REQUEST_FIELDS`), in invoke order: the versions the world file replaced within an hour among them, by
    their version numbers; a failed or ambiguous one too (it may have landed)."""
    out = [{"t": f["invoke"], "complete": f["complete"], "store": f["store"], "call": f["call"],
            "server": str(f["obj"]).split("#", 1)[0], "outcome": f["outcome"], "read": f["read"],
            "written": f["written"]} for f in run.writes_of(key)]
    return sorted(out, key=lambda w: (w["t"], w["complete"]))


def _fault_windows(scenario: Any) -> list[dict[str, Any]]:
    out = []
    for w in scenario.faults:
        what = []
        if w.outage:
            what.append("DataStore outage")
        what += [f"{kind} errors {rate:g}" for kind, rate in sorted(w.error_rate.items()) if rate]
        for label, rate in (("ambiguous writes", w.ambiguous_write_rate), ("server crashes", w.server_crash_rate),
                            ("lock stalls", w.lock_stall_rate)):
            if rate:
                what.append(f"{label} {rate:g}")
        if w.latency_ms is not None:
            what.append("added latency")
        if w.memorystore_outage:
            what.append("MemoryStore outage")
        what += [f"MemoryStore {kind} errors {rate:g}" for kind, rate in sorted(w.memorystore_error_rate.items())
                 if rate]
        out.append({"start": int(w.start * 1000), "end": int(w.end * 1000), "what": ", ".join(what)})
    return out


def _window_of(windows: list[dict[str, Any]], t: int) -> int | None:
    """The index of the first fault window `t` is in, or None."""
    return next((i for i, w in enumerate(windows) if w["start"] <= t < w["end"]), None)


def _op_rows(run: _Run, key: str, ops: list[dict], final: Any, windows: list[dict]) -> list[dict[str, Any]]:
    """The actions on `key` in time order, each with its error code and transaction outcome (the annotations),
    its role (a trade's receiver, or the actor), whether it is in the final ledger and the fault window it is in."""
    ledger = set(final.get("ledger", ())) if isinstance(final, dict) else None
    notes = run.annotations.get("ops") or {}
    rows = []
    for e in sorted(ops, key=lambda e: (e["t"], e["op_id"])):
        note = notes.get(e["op_id"], {})
        rows.append({"t": e["t"], "op_id": e["op_id"], "key": e["key"], "kind": e["kind"], "outcome": e["outcome"],
                     "amount": e.get("amount", 0), "item": e.get("item"), "counterparty": e.get("counterparty"),
                     "server": e["server"], "role": "receiver" if e.get("counterparty") == key else "actor",
                     "why": note.get("why"), "tx": note.get("tx"),
                     "in_final_ledger": None if ledger is None else e["op_id"] in ledger,
                     "fault_window": _window_of(windows, e["t"])})
    return rows


def _faults(run: _Run, key: str, op_rows: list[dict], windows: list[dict]) -> list[dict[str, Any]]:
    """The errors that reached an action on `key` (a refusal is no fault) and the store's warnings about it."""
    faults = [{"t": o["t"], "source": "action", "server": o["server"], "op_id": o["op_id"], "kind": o["kind"],
               "outcome": o["outcome"], "code": o["why"], "fault_window": o["fault_window"]}
              for o in op_rows if o["why"] is not None and o["why"] != "Refused"]
    for t, server, level, text in (run.annotations.get("store_log") or {}).get(key, ()):
        faults.append({"t": t, "source": "store", "server": server, "level": level, "text": text,
                       "fault_window": _window_of(windows, t)})
    return sorted(faults, key=lambda f: (f["t"], f["source"]))


def _counterexamples(run: _Run, key: str, op_rows: list[dict], versions: list[dict]) -> list[dict[str, Any]]:
    """What the failing checks say of `key`, each with the moment it sits at ("from".."to", ms) when one is known:
    a ledger problem at its op, a double lock over its overlap, a duplicated item from the first action or version
    that brought it to the last, a negative balance at the last version."""
    by_op = {o["op_id"]: o for o in op_rows}
    out = []
    for m in _moments(run.report.get("checks") or ()):
        if m["key"] != key:
            continue
        moment = {k: v for k, v in m.items() if k != "key"}
        if m.get("op_id") in by_op:
            moment["from"] = moment["to"] = by_op[m["op_id"]]["t"]
        elif m.get("item") is not None:
            times = [o["t"] for o in op_rows if o["item"] == m["item"]]
            times += [v["t"] for v in versions if m["item"] in v["diff"]["items_added"]]
            if times:
                moment["from"], moment["to"] = min(times), max(times)
        elif m["check"] == "conservation" and versions:
            moment["from"] = moment["to"] = versions[-1]["t"]
        out.append(moment)
    return out


def _build(run: _Run, key: str, inspector: Any, finals: Mapping[str, Any] | None = None) -> dict[str, Any]:
    if not isinstance(key, str) or not key:
        raise TimelineError(f"KEY must be a non-empty key name, got {key!r}")
    touching = run.events_of(key)
    locks = [e for e in touching if e.get("type") == "lock"]
    ops = [e for e in touching if e.get("type") == "op"]
    t0 = run.annotations.get("t0_ms")
    if not isinstance(t0, int):
        t0 = virtual.EPOCH_MS + 1000   # the engine's simulated 0 (`_Virtual.t0`) for a history without annotations
    versions, versions_note = _versions(run, key, t0, inspector)
    if not locks and not ops and not versions:
        known = run.keys()
        hint = f" (it knows {len(known)}: {', '.join(known[:5])}{', ...' if len(known) > 5 else ''})" if known else ""
        raise TimelineError(f"no key {key!r} in {run.dir}: no lock, action or version of it{hint}")
    final, final_source = None, None
    if versions:
        final, final_source = next((v["data"] for v in reversed(versions) if not v["deleted"]), None), "world file"
    elif finals is not None and key in finals:
        final, final_source = finals[key], "the run's final read"
    windows = _fault_windows(run.scenario)
    op_rows = _op_rows(run, key, ops, final, windows)
    holds = _holds(locks)
    server_of = {h["session"]: h["server"] for h in holds}
    for v in versions:
        v["server"] = server_of.get(v["session"])
    servers = sorted({h["server"] for h in holds} | {o["server"] for o in op_rows})
    server_events = [{"t": t, "what": what, "server": server} for t, what, server in run.annotations.get("servers", ())
                     if server in servers and what != "start"]
    faults = _faults(run, key, op_rows, windows)
    counterexamples = _counterexamples(run, key, op_rows, versions)
    duration_ms = int(run.scenario.world.duration * 1000)
    times = [duration_ms] + [h["end"] for h in holds] + [o["t"] for o in op_rows] + [v["t"] for v in versions]
    return {"format": TIMELINE_FORMAT, "key": key, "run_dir": str(run.dir),
            "scenario": run.scenario.world.name, "design": run.scenario.store.design,
            "verdict": run.report.get("verdict"), "duration_ms": duration_ms, "end_ms": max(times),
            "servers": servers, "holds": holds, "lock_events": sorted(locks, key=lambda e: e["t"]),
            "server_events": server_events, "versions": versions, "versions_note": versions_note,
            "writes": _writes(run, key),
            "ops": op_rows, "faults": faults, "fault_windows": windows,
            "counterexamples": counterexamples, "final": final, "final_source": final_source,
            "annotated": bool(run.annotations)}


def _open_world(run: _Run) -> Any:
    """The world file opened read-only through `inspect`'s reader, or None for a run without one."""
    if not run.world.exists():
        return None
    try:
        return _Inspector(run.world)
    except InspectError as exc:
        raise TimelineError(f"cannot read the run's world file: {exc.message}") from None


def build_timeline(run_dir: str | Path, key: str) -> dict[str, Any]:
    """`key`'s timeline in the finished run at `run_dir`, as a JSON-ready dict (``"format": 1``)::

        {"key", "run_dir", "scenario", "design", "verdict", "duration_ms", "end_ms",   # times: simulated ms
         "servers": [server ids that held its lock or acted on it],
         "holds": [{"server", "session", "start", "renewed", "ttl_ms", "expires", "end", "ended",
                    "states": [{"t", "state"}]}],   # ended: released, lost, crashed, vanished or None
         "lock_events": [history lock events], "server_events": [{"t", "what", "server"}],   # stop, crash, stall
         "versions": [{"version", "t", "created_time", "deleted", "session", "server", "transaction", "data",
                       "diff": {"coins", "items_added", "items_removed", "ops_added", "ops_removed"}}],
         "versions_note": str,
         "writes": [{"t", "complete", "store", "call", "server", "outcome", "read", "written"}],   # every write of
                   # the key the raw requests record (versions as per-key sequence numbers), kept or replaced
         "ops": [{"t", "op_id", "key", "kind", "outcome", "amount", "item", "counterparty", "server", "role", "why",
                  "tx", "in_final_ledger", "fault_window"}],   # key: the actor's; role: actor or a trade's receiver;
                                                                # fault_window: the index of its window, or None
         "faults": [{"t", "source", "server", "fault_window", ...}],   # source "action": an error reached an
                    # action ("op_id", "kind", "outcome", "code"); "store": the store warned about the key, e.g. a
                    # request failed and was retried, a lock taken over ("level", "text")
         "fault_windows": [{"start", "end", "what"}],
         "counterexamples": [{"check", "text", "from", "to", ...}], "final": the last version's data (or, for a report's
         timeline of a run without a world file, the run's final read), "final_source",
         "annotated": whether the history had annotations (error codes, tx outcomes, server events)}

    Raises `TimelineError` for a directory that is not a finished run's or a key it knows nothing of.
    """
    run = _Run(run_dir)
    inspector = _open_world(run)
    try:
        return _build(run, key, inspector)
    finally:
        if inspector is not None:
            inspector.world.shutdown()


# ------------------------------------------------------------------------------------------------ the page

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1em; color: #222; }
h1 { font-size: 1.3em; margin: 0.2em 0; } h2 { font-size: 1.1em; margin: 1.2em 0 0.3em; }
table { border-collapse: collapse; margin: 0.3em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
tr.bad td { background: #ffebe9; } .cx { color: #cf222e; font-weight: bold; }
.note { color: #555; font-size: 0.9em; } svg text { font-size: 11px; font-family: system-ui, sans-serif; }
"""
_WIDTH, _LEFT, _LANE = 1200, 150, 34
_OP_COLOURS = {"ok": "#1a7f37", "failed": "#8c959f", "unknown": "#d4a72c"}
_END_COLOURS = {"released": "#2f81f7", "lost": "#cf222e", "crashed": "#8250df", "vanished": "#6e7781",
                None: "#2f81f7"}


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _op_text(o: Mapping[str, Any]) -> str:
    what = {"mint": f"+{o['amount']} coins", "purchase": f"-{o['amount']} coins",
            "grant": f"item {o['item']}"}.get(o["kind"])
    if o["kind"] == "trade":
        goods = f"{o['amount']} coins{' + ' + str(o['item']) if o['item'] else ''}"
        what = f"{goods} from {o['key']}" if o["role"] == "receiver" else f"{goods} to {o['counterparty']}"
    text = f"{o['op_id']} {o['kind']} {what} {o['outcome']}"
    if o["why"]:
        text += f" ({o['why']})"
    if o["tx"]:
        text += f" tx {o['tx']}"
    if o["in_final_ledger"] is False and o["outcome"] == "ok":
        text += " - NOT in the final ledger"
    return text


def _diff_text(d: Mapping[str, Any]) -> str:
    parts = []
    if d.get("coins"):
        parts.append(f"coins {d['coins']:+d}")
    for label, name in (("+items", "items_added"), ("-items", "items_removed"), ("+ops", "ops_added"),
                        ("-ops", "ops_removed")):
        if d.get(name):
            parts.append(f"{label} {', '.join(map(str, d[name]))}")
    return "; ".join(parts) or "no change"


def _svg(tl: Mapping[str, Any]) -> str:
    end = max(1, tl["end_ms"])
    scale = (_WIDTH - _LEFT - 20) / end

    def x(t: float) -> float:
        return round(_LEFT + max(0, t) * scale, 1)

    lanes = [("server", s) for s in tl["servers"]] + [("versions", None), ("ops", None), ("faults", None)]
    height = 30 + _LANE * len(lanes) + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" role="img" '
           f'aria-label="timeline of {_esc(tl["key"])}">']
    for w in tl["fault_windows"]:
        out.append(f'<rect class="fault-window" x="{x(w["start"])}" y="20" width="{x(w["end"]) - x(w["start"])}" '
                   f'height="{height - 40}" fill="#ffd8b5" opacity="0.5"><title>fault window {w["start"]}..'
                   f'{w["end"]} ms: {_esc(w["what"])}</title></rect>')
    for c in tl["counterexamples"]:
        if c.get("from") is None:
            continue
        width = max(3, x(c["to"]) - x(c["from"]))
        out.append(f'<rect class="counterexample" x="{x(c["from"]) - 1}" y="14" width="{width}" '
                   f'height="{height - 28}" fill="#cf222e" opacity="0.35"><title>{_esc(c["check"])}: '
                   f'{_esc(c["text"])}</title></rect>')
    ticks = 10
    for i in range(ticks + 1):
        t = end * i / ticks
        out.append(f'<line x1="{x(t)}" y1="18" x2="{x(t)}" y2="{height - 18}" stroke="#eee"/>'
                   f'<text x="{x(t)}" y="12" text-anchor="middle">{t / 1000:,.0f} s</text>')
    for i, (kind, server) in enumerate(lanes):
        y = 24 + i * _LANE
        label = server if kind == "server" else kind
        out.append(f'<text x="4" y="{y + 18}">{_esc(label)}</text>'
                   f'<line x1="{_LEFT}" y1="{y + _LANE - 2}" x2="{_WIDTH - 20}" y2="{y + _LANE - 2}" stroke="#ddd"/>')
        if kind == "server":
            for h in (h for h in tl["holds"] if h["server"] == server):
                colour = _END_COLOURS.get(h["ended"], "#2f81f7")
                # a released lock has no TTL left; a lost one shows whether it went before its lease ran out
                expires = min(h["expires"], h["end"]) if h["ended"] == "released" else h["expires"]
                out.append(f'<rect class="hold" x="{x(h["start"])}" y="{y + 6}" '
                           f'width="{max(2, x(h["end"]) - x(h["start"]))}" height="14" fill="{colour}" '
                           f'opacity="0.75"><title>session {_esc(h["session"])}: {h["start"]}..{h["end"]} ms, '
                           f'{_esc(h["ended"] or "held to the end")}</title></rect>'
                           f'<rect class="ttl" x="{x(h["renewed"])}" y="{y + 21}" '
                           f'width="{max(2, x(expires) - x(h["renewed"]))}" height="5" fill="none" '
                           f'stroke="{colour}"><title>TTL window: renewed {h["renewed"]} ms, expires '
                           f'{h["expires"]} ms</title></rect>')
            for e in (e for e in tl["server_events"] if e["server"] == server):
                out.append(f'<text class="server-event" x="{x(e["t"])}" y="{y + 5}" text-anchor="middle" '
                           f'fill="#cf222e">{"X" if e["what"] == "crash" else "||" if e["what"] == "stall" else "."}'
                           f'<title>{_esc(e["what"])} at {e["t"]} ms</title></text>')
        elif kind == "versions":
            for v in tl["versions"]:
                out.append(f'<rect class="version" x="{x(v["t"]) - 4}" y="{y + 8}" width="8" height="12" '
                           f'fill="#0969da"><title>{_esc(v["version"])} at {v["t"]} ms: {_esc(_diff_text(v["diff"]))}'
                           f'</title></rect>')
        elif kind == "faults":
            for f in tl["faults"]:
                what = f"{f['op_id']} {f['kind']} {f['outcome']}: {f['code']}" if f["source"] == "action" else (
                    f"{f['server'] or '?'} {f['level']}: {f['text']}")
                y0 = y + (4 if f["source"] == "action" else 16)
                out.append(f'<rect class="fault" x="{x(f["t"]) - 1}" y="{y0}" width="3" height="10" '
                           f'fill="{"#cf222e" if f["source"] == "action" else "#bc4c00"}"><title>{f["t"]} ms: '
                           f'{_esc(what)}</title></rect>')
        else:
            for o in tl["ops"]:
                lost = o["in_final_ledger"] is False and o["outcome"] == "ok"
                colour = "#cf222e" if lost else _OP_COLOURS[o["outcome"]]
                fill = "white" if o["role"] == "receiver" else colour   # a ring: a trade to this key
                out.append(f'<circle class="op" cx="{x(o["t"])}" cy="{y + 14}" r="{6 if lost else 4}" '
                           f'fill="{fill}" stroke="{colour}" stroke-width="2"><title>{o["t"]} ms: '
                           f'{_esc(_op_text(o))}</title></circle>')
    out.append("</svg>")
    return "".join(out)


def _table(headers: Sequence[str], rows: list[tuple[list[Any], bool]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join(("<tr class=\"bad\">" if bad else "<tr>") + "".join(f"<td>{_esc(c)}</td>" for c in cells)
                   + "</tr>" for cells, bad in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _version_cells(v: Mapping[str, Any]) -> list[Any]:
    data = v["data"] if isinstance(v["data"], dict) else {}
    tx = v["transaction"]
    return [v["t"], v["version"], f"{v['server'] or '?'} (session {v['session']})" if v["session"] else "-",
            data.get("coins", "-"), len(data.get("items", ())) if "items" in data else "-",
            "deleted" if v["deleted"] else _diff_text(v["diff"]),
            f"{tx['id']}: marker {tx['marker'] or 'gone'}, {'applied' if tx['applied'] else 'not applied'}" if tx
            else "-"]


def render_html(tl: Mapping[str, Any]) -> str:
    """The timeline as one self-contained HTML page (inline CSS and SVG; nothing fetched)."""
    parts = [f"<h1>Timeline of {_esc(tl['key'])}</h1>",
             f"<p>run {_esc(tl['run_dir'])}: scenario {_esc(tl['scenario'])}, design {_esc(tl['design'])}, "
             f"verdict {_esc(tl['verdict'])}. Times in simulated ms from the start.</p>"]
    for c in tl["counterexamples"]:
        at = f" at {c['from']}..{c['to']} ms" if c.get("from") is not None else ""
        parts.append(f'<p class="cx">counterexample ({_esc(c["check"])}){_esc(at)}: {_esc(c["text"])}</p>')
    parts.append(_svg(tl))
    parts.append('<p class="note">Lanes: one per server that held the lock (bar: the hold, coloured by how it ended: '
                 'blue released, red lost, purple crashed, grey vanished; outline below it: the TTL window of its '
                 'last renewal; X a crash, || a stall), the DataStore versions, the actions (green ok, grey failed, '
                 'amber unknown, big red: acknowledged but not in the final ledger; a ring: a trade to this key). '
                 'Faults: red, an error that reached an action (top); brown, a warning of the store about the key, '
                 'e.g. a request retried (bottom). Orange bands: fault windows; '
                 'red bands: the counterexample.</p>')
    if not tl.get("annotated"):
        parts.append('<p class="note">This history has no annotations (an older lodestore): no error codes, '
                     'transaction outcomes or server events.</p>')
    parts.append("<h2>Lock holders</h2>")
    parts.append(_table(("server", "session", "start", "last renewal", "TTL ms", "expires", "end", "ended", "states"),
                        [([h["server"], h["session"], h["start"], h["renewed"], h["ttl_ms"], h["expires"], h["end"],
                           h["ended"] or "held to the end",
                           ", ".join(f"{s['state']}@{s['t']}" for s in h["states"])], h["ended"] == "lost")
                         for h in tl["holds"]]))
    if tl["server_events"]:
        parts.append(_table(("t", "server", "event"), [([e["t"], e["server"], e["what"]], e["what"] != "stop")
                                                       for e in tl["server_events"]]))
    parts.append(f"<h2>DataStore versions</h2><p class=\"note\">{_esc(tl['versions_note'])}</p>")
    parts.append(_table(("t", "version", "written by", "coins", "items", "diff", "transaction"),
                        [(_version_cells(v), False) for v in tl["versions"]]))
    if tl["writes"]:
        parts.append(f"<h2>Every write of the key ({len(tl['writes'])}, from the run's raw requests)</h2>")
        parts.append(_table(("invoke", "complete", "server", "call", "store", "read version", "wrote version",
                             "outcome"),
                            [([w["t"], w["complete"], w["server"], w["call"], w["store"],
                               "-" if w["read"] is None else w["read"], "-" if w["written"] is None else w["written"],
                               w["outcome"]], w["outcome"] != "ok") for w in tl["writes"]]))
    parts.append("<h2>Actions acknowledged to the player</h2>")
    parts.append(_table(("t", "op", "kind", "outcome", "server", "role", "amount", "item", "counterparty", "error",
                         "tx", "in final ledger"),
                        [([o["t"], o["op_id"], o["kind"], o["outcome"], o["server"], o["role"], o["amount"],
                           o["item"] or "-", o["counterparty"] or "-", o["why"] or "-", o["tx"] or "-",
                           "-" if o["in_final_ledger"] is None else "yes" if o["in_final_ledger"] else "no"],
                          o["outcome"] == "ok" and o["in_final_ledger"] is False) for o in tl["ops"]]))
    if tl["faults"]:
        parts.append("<h2>Faults that reached the key</h2>")
        parts.append(_table(("t", "source", "server", "what", "fault window"),
                            [([f["t"], f["source"], f["server"] or "-",
                               f"{f['op_id']} ({f['kind']}, {f['outcome']}): {f['code']}" if f["source"] == "action"
                               else f"{f['level']}: {f['text']}",
                               "-" if f["fault_window"] is None else f["fault_window"]], f["source"] == "action")
                             for f in tl["faults"]]))
    if tl["fault_windows"]:
        parts.append("<h2>Fault windows</h2>")
        parts.append(_table(("start ms", "end ms", "what"), [([w["start"], w["end"], w["what"]], False)
                                                             for w in tl["fault_windows"]]))
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>lodestore timeline: "
            f"{_esc(tl['key'])}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(parts)
            + "\n</body>\n</html>\n")


# ------------------------------------------------------------------------------------------------ writing


def _write(tl: Mapping[str, Any], html_path: Path) -> tuple[Path, Path]:
    html_path.parent.mkdir(parents=True, exist_ok=True)
    json_path = html_path.with_suffix(".json")
    json_path.write_text(json.dumps(tl, indent=1, default=str), encoding="utf-8")
    html_path.write_text(render_html(tl), encoding="utf-8")
    return html_path, json_path


def write_timeline(run_dir: str | Path, key: str, out: str | Path | None = None) -> tuple[Path, Path]:
    """Write `key`'s timeline: the page at `out` (default RUN_DIR/timelines/<key>.html, as the report links it)
    and its JSON beside it (the same name, ``.json``). Returns (html path, json path)."""
    tl = build_timeline(run_dir, key)
    html_path = Path(out) if out is not None else Path(run_dir) / timeline_href(key)
    return _write(tl, html_path)


def write_timelines(run_dir: str | Path, report: Mapping[str, Any],
                    finals: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """The timelines of the keys the failing checks of `report` name, then of a served run's replaced edits
    (`report["open_cloud"]["writes"]["examples"]`), at most `MAX_REPORT_TIMELINES`, written where its page links
    them; {key: html path}. The world file is opened once for all of them. `finals` (each player's data as the
    run read it at its end) stands in for the world file's versions when there is no file (a memory backend), so
    that the actions still say whether they are in the final ledger."""
    named = keys_named(report.get("checks") or ())
    edited = [x["key"] for x in ((report.get("open_cloud") or {}).get("writes") or {}).get("examples", ())]
    keys = list(dict.fromkeys(named + edited))[:MAX_REPORT_TIMELINES]
    if not keys:
        return {}
    run = _Run(run_dir, report)
    inspector = _open_world(run)
    try:
        return {key: _write(_build(run, key, inspector, finals), Path(run_dir) / timeline_href(key))[0] for key in keys}
    finally:
        if inspector is not None:
            inspector.world.shutdown()


# ------------------------------------------------------------------------------------------------ the command


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the `timeline` sub-command to `sub` (an argparse subparsers object)."""
    parser = sub.add_parser("timeline", help="one key's story in a finished run, as an HTML page and JSON",
                            description="Show KEY's story in the run at RUN_DIR: every server that held its lock "
                                        "and when (with the TTL window), the DataStore versions the world file "
                                        "keeps with each one's diff, transaction markers, the faults that hit its "
                                        "actions, the actions acknowledged to the player, and where a checker's "
                                        "counterexample sits. Writes an HTML page and its JSON beside it.")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="a finished run's directory (report.json, history.json, ...)")
    parser.add_argument("key", metavar="KEY", help="the player's key, e.g. player_00003")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help="the HTML file (default RUN_DIR/timelines/KEY.html); the JSON goes beside it")
    parser.set_defaults(func=_run_command)
    return parser


def _run_command(args: argparse.Namespace) -> int:
    """0: written; 2: not a run directory, or a key the run knows nothing of."""
    try:
        html_path, json_path = write_timeline(args.run_dir, args.key, args.out)
    except TimelineError as exc:
        print(f"lodestore timeline: {exc.message}", file=sys.stderr)
        return exc.status
    except OSError as exc:
        print(f"lodestore timeline: {exc}", file=sys.stderr)
        return USAGE
    print(f"timeline of {args.key!r}: {html_path} (JSON: {json_path})")
    return 0

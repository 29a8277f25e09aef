"""The `lodestore` command: `lodestore simulate SCENARIO.toml` (the main job), `lodestore replay RUN_DIR`,
`lodestore compare SCENARIO.toml --designs ...`, `lodestore inspect DB ...` and `lodestore serve` (Open Cloud's HTTP
API over a running or new world).

Owns: argument parsing and exit statuses. `simulate` exits 0 when every checker passed, 1 when one failed (the
counterexample is printed), 2 on a bad scenario, option or path (a message, no traceback), 3 when the checks passed
but the run is inconclusive (the harness could not keep up; the report's health says why), 130 when stopped early by
Ctrl-C (BindToClose, the checks and the report still ran; a second Ctrl-C abandons the run, with no report).
`replay` exits 0 when the replay's history digest matches the run's (or `--until` stopped where asked), 1 when it
differs, 2 on a directory that is not a run's. `compare` exits 0 when every design met the scenario's
`[thresholds]` (a design failing a checker is a result), 1 when one did not, 2 on bad input. `simulate` also exits 1
when a threshold did not hold. `serve` exits 0 when stopped by Ctrl-C, 2 on a bad option, a port in use or a world
that cannot be joined or started (nothing is started then).

Never does: anything a library call could not do as well (it calls `sim.simulate` and `sim._inspect`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lodestore.sim._inspect import add_parser as add_inspect_parser
from lodestore.sim._runner import RunOptions, simulate
from lodestore.sim._scenario import load_scenario
from lodestore.sim._timeline import add_parser as add_timeline_parser
from lodestore.sim.designs import DESIGNS
from lodestore.storage import ConfigError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lodestore", description="Simulate Roblox game servers and their "
                                     "session-locked player data on Ray, and check that nothing is lost.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("simulate", help="run a scenario and write its report",
                         description="Run a scenario (TOML): many simulated game servers against one emulated "
                                     "DataStore/MemoryStore world, then check conservation of currency, "
                                     "acknowledged writes, single lock holders and item uniqueness.")
    run.add_argument("scenario", type=Path, help="the scenario file (see examples/scenarios/)")
    run.add_argument("--out", type=Path, default=None,
                     help="report directory (default: lodestore-runs/<timestamp>-<name>)")
    _add_run_arguments(run)
    run.add_argument("--time-scale", type=float, default=None,
                     help="pace the run at this many simulated seconds per wall second (default: as fast as it goes)")
    run.set_defaults(func=_simulate)
    replay = sub.add_parser("replay", help="run a finished run's scenario and seed again; check the history digest",
                            description="Run RUN_DIR's scenario.toml again (same seed, same host count, the same "
                                        "engine unless told; its events.json instead of the plan when it has one, "
                                        "as a shrink's result does) and say whether the history digest matches the "
                                        "report's. With --until T, stop at simulated second T and leave the world "
                                        "file (for `lodestore inspect`) instead.")
    replay.add_argument("run_dir", type=Path, help="a run's report directory (it holds report.json and scenario.toml)")
    replay.add_argument("--until", type=float, default=None, help="stop at this simulated second; keep the world")
    replay.add_argument("--out", type=Path, default=None, help="where the replay writes (default: RUN_DIR/replay)")
    replay.add_argument("--in-process", action="store_true", help="replay without Ray (the same history)")
    replay.add_argument("--address", default=None, help="join a running Ray cluster; default: local Ray")
    replay.add_argument("--no-progress", action="store_true", help="plain progress lines even on a terminal")
    replay.set_defaults(func=_replay)
    shr = sub.add_parser("shrink", help="find a much smaller scenario and event list that fail the same way",
                         description="From a failed run's directory, find a much smaller scenario (fewer players, "
                                     "servers, fault windows, a shorter run, lower rates), then the smallest event "
                                     "list (delta debugging), that still fail the same checker the same way; every "
                                     "try runs in this process, one progress line each. Writes the final run's "
                                     "report with scenario.toml and events.json (`lodestore replay OUT` plays them) "
                                     "and the shrink's log (shrink.json, shrink.log). Exits 0 when the result fails "
                                     "the same way, 1 when it does not, 2 for bad input or a run that passed.")
    shr.add_argument("run_dir", type=Path, help="a failed run's report directory (report.json, scenario.toml)")
    budget = shr.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=int, default=None, metavar="N",
                        help="at most N tries (default 150; the same run always shrinks to the same result)")
    budget.add_argument("--budget-seconds", type=float, default=None, metavar="S",
                        help="at most S wall seconds instead (the result then depends on the machine's speed)")
    shr.add_argument("--out", type=Path, default=None, help="where the result goes (default: RUN_DIR/shrunk)")
    shr.add_argument("--checker", default=None, metavar="NAME",
                     help="the failing checker to keep (default: the first that failed)")
    shr.set_defaults(func=_shrink)
    cmp = sub.add_parser("compare", help="run one scenario against several designs and report side by side",
                         description="Run SCENARIO once per design (the same seed: the same players, actions and "
                                     "faults) and write one comparison: every checker's verdict, writes lost, items "
                                     "duplicated, overlapping sessions, data at risk, requests, latency. Exits 1 "
                                     "when a design breaks one of the scenario's [thresholds], else 0.")
    cmp.add_argument("scenario", type=Path, help="the scenario file (see examples/scenarios/)")
    cmp.add_argument("--designs", default=",".join(DESIGNS),
                     help=f"comma-separated designs (default: all: {','.join(DESIGNS)})")
    cmp.add_argument("--out", type=Path, default=None,
                     help="comparison directory, one subdirectory per design (default: lodestore-runs/...-compare)")
    _add_run_arguments(cmp)
    cmp.set_defaults(func=_compare, time_scale=None)
    add_inspect_parser(sub)
    add_timeline_parser(sub)
    srv = sub.add_parser("serve", help="serve Roblox's Open Cloud HTTP API over a world, until Ctrl-C",
                         description="Serve Open Cloud (Data Stores v1 and v2, ordered data stores, MemoryStore "
                                     "sorted maps and queues) over the running world NAME, or over a new one "
                                     "(time scale 1, SQLite at lodestore-data/NAME.db) when none runs; Ctrl-C stops "
                                     "it (and the world, if this command started it).")
    srv.add_argument("--world", default="default", help="the world's name (default: default)")
    srv.add_argument("--port", type=int, default=8787, help="the port to listen on (default 8787)")
    srv.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this "
                                                         "machine only); plain HTTP, so anything else warns")
    srv.add_argument("--api-key", action="append", default=None, metavar="KEY[:PERM,...]",
                     help="an accepted API key, with every permission or those listed (datastores.read, "
                          "datastores.write, memorystore.read, memorystore.write, ...); repeat for more. "
                          "Default: lodestore-test-key with every permission")
    srv.add_argument("--universe-id", type=int, default=1, help="the universe id served (default 1)")
    srv.add_argument("--address", default=None,
                     help="the Ray that runs the world: a cluster's, or a paced simulation's local Ray (it prints "
                          "the address); default: a local Ray of this command's own")
    srv.add_argument("--dashboard", action="store_true",
                     help="start the local Ray with its dashboard on 127.0.0.1 and print its URL")
    srv.set_defaults(func=_serve)
    return parser


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """What `simulate` and `compare` take alike: where to run, the host count, the scenario overrides, progress."""
    parser.add_argument("--address", default=None,
                        help="join a running Ray cluster ('auto' from a cluster node); default: local Ray")
    parser.add_argument("--in-process", action="store_true",
                        help="no Ray: the same engine with every node in this process (the same history)")
    parser.add_argument("--hosts", type=int, default=None, help="nodes the game servers are spread over (default 2; "
                                                                "part of what a history depends on)")
    parser.add_argument("--seed", type=int, default=None, help="override world.seed")
    parser.add_argument("--duration", type=float, default=None, help="override world.duration (simulated seconds)")
    parser.add_argument("--players", type=int, default=None, help="override players.population")
    parser.add_argument("--no-progress", action="store_true", help="plain progress lines even on a terminal")
    parser.add_argument("--dashboard", action="store_true",
                        help="start local Ray with its dashboard on 127.0.0.1 and print its URL")


def _run_options(args: argparse.Namespace) -> RunOptions:
    """The RunOptions of `simulate` and `compare` from their shared arguments (`_add_run_arguments`)."""
    return RunOptions(out=args.out, engine="in-process" if args.in_process else "ray", address=args.address,
                      hosts=args.hosts, progress=False if args.no_progress else None, dashboard=args.dashboard)


def _compare(args: argparse.Namespace) -> int:
    """0: every design met the scenario's thresholds (or it sets none); 1: one did not; 2: bad input."""
    from lodestore.sim._compare import compare

    def run() -> int:
        scenario = _override(load_scenario(args.scenario), args)
        designs = [d.strip() for d in args.designs.split(",") if d.strip()]
        return compare(scenario, designs, _run_options(args)).exit_status
    return _guarded("compare", run, " (no comparison)")


def _guarded(command: str, run, abandoned: str = "") -> int:
    """`run()`'s exit status, or 2 for bad input (ConfigError, OSError: a message, no traceback), or 130 when Ctrl-C
    abandoned it."""
    try:
        return run()
    except (ConfigError, OSError) as exc:
        print(f"lodestore {command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nlodestore {command}: abandoned{abandoned}", file=sys.stderr)
        return 130


def _simulate(args: argparse.Namespace) -> int:
    try:
        scenario = load_scenario(args.scenario)
        scenario = _override(scenario, args)
        options = _run_options(args)
    except (ConfigError, OSError) as exc:
        print(f"lodestore simulate: {exc}", file=sys.stderr)
        return 2
    result = _run("simulate", scenario, options)
    if isinstance(result, int):
        return result
    for check in result.checks:
        if not check.ok:
            print(f"counterexample ({check.name}): {check.counterexample}", file=sys.stderr)
    for problem in result.report["health"]["problems"]:
        print(f"inconclusive: {problem}", file=sys.stderr)
    return result.exit_status


def _run(command: str, scenario, options: RunOptions):
    """`simulate(scenario, options)`, or the exit status of its failure: 2 for bad input found once it starts (a
    message, no traceback), 130 when a second Ctrl-C abandoned it."""
    try:
        return simulate(scenario, options)
    except ConfigError as exc:
        print(f"lodestore {command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nlodestore {command}: abandoned (no report)", file=sys.stderr)
        return 130


def _saved_events(run_dir: Path):
    """The event list a run played instead of its plan (its events.json), or None when it played its plan."""
    import json

    from lodestore.sim._workload import events_from_json
    path = run_dir / "events.json"
    if not path.is_file():
        return None
    return tuple(events_from_json(json.loads(path.read_text(encoding="utf-8")), str(path)))


def _replay(args: argparse.Namespace) -> int:
    """0: the digest matches (or --until stopped where asked); 1: it differs; 2: not a run directory."""
    import dataclasses
    import json

    from lodestore.sim._runner import _default_replay_out
    try:
        report = json.loads((args.run_dir / "report.json").read_text(encoding="utf-8"))
        scenario = load_scenario(args.run_dir / "scenario.toml")
        expected, run = report.get("digest"), report["run"]
        if expected is None and args.until is None:
            raise ConfigError(f"{args.run_dir}: the report has no history digest (a run that stopped early or an "
                              f"older lodestore); nothing to compare")
        # the world file goes into the replay's directory, never over the run's own
        scenario = dataclasses.replace(scenario, world=dataclasses.replace(scenario.world, path=None))
        out = args.out if args.out is not None else _default_replay_out(args.run_dir)
        engine = "in-process" if args.in_process else "ray"
        events = _saved_events(args.run_dir)
        options = RunOptions(out=out, engine=engine, address=args.address, hosts=run["hosts"], until=args.until,
                             progress=False if args.no_progress else None, events=events)
    except (ConfigError, OSError, KeyError, ValueError) as exc:
        print(f"lodestore replay: {args.run_dir}: {exc}", file=sys.stderr)
        return 2
    result = _run("replay", scenario, options)
    if isinstance(result, int):
        return result
    if args.until is not None:
        print(f"world at simulated second {args.until:g}: {result.report['run']['world_path']}")
        return 0
    digest = result.report["digest"]
    if digest == expected:
        print(f"replay matches: digest {digest}")
        return 0
    print(f"replay differs: digest {digest}, the run's {expected}", file=sys.stderr)
    return 1


def _shrink(args: argparse.Namespace) -> int:
    """0: the shrunk run fails the same way; 1: it does not; 2: bad input (not a run, a run that passed)."""
    from lodestore.sim._shrink import shrink

    def run() -> int:
        result = shrink(args.run_dir, budget=args.budget, budget_seconds=args.budget_seconds, out=args.out,
                        checker=args.checker)
        print(f"shrunk: {result.out}")
        return 0 if result.reproduced else 1
    return _guarded("shrink", run)


def _serve(args: argparse.Namespace) -> int:
    """Serve Open Cloud over the world `args.world` (joined, or started when none runs) until Ctrl-C; shut down
    only what this command started."""
    import uvicorn

    from lodestore.storage import World, virtual
    from lodestore.storage.opencloud import DEFAULT_API_KEY, LOOPBACK_HOSTS, check_listen, create_app, parse_api_keys
    try:
        parse_api_keys(args.api_key)   # every check that needs no world first: a refusal starts nothing
        if not 0 < args.port < 65536:
            raise ConfigError(f"--port must be from 1 to 65535, got {args.port}")
        if args.universe_id <= 0:
            raise ConfigError(f"--universe-id must be a positive integer, got {args.universe_id}")
        check_listen(args.host, args.port)
        if args.dashboard:
            print(f"lodestore serve: dashboard: {virtual.ensure_ray(args.address, dashboard=True)}")
        try:
            world, started = World.connect(args.world, address=args.address), False
        except ConfigError:
            world, started = World.start(args.world, time_scale=1.0, address=args.address), True
    except (ConfigError, OSError) as exc:
        print(f"lodestore serve: {exc}", file=sys.stderr)
        return 2
    try:
        app = create_app(world, api_keys=args.api_key, universe_id=args.universe_id)
        how = "started" if started else "joined"
        print(f"lodestore serve: Open Cloud for world {args.world!r} ({how}), universe {args.universe_id}, at "
              f"http://{args.host}:{args.port}/")
        if not args.api_key:
            print(f"lodestore serve: accepting the API key {DEFAULT_API_KEY!r} (every permission); give --api-key "
                  f"to choose keys")
        if args.host not in LOOPBACK_HOSTS:
            print(f"lodestore serve: warning: listening on {args.host}, beyond this machine, over plain HTTP: "
                  f"keys and data travel unencrypted", file=sys.stderr)
        print("lodestore serve: Ctrl-C stops" + (" (and shuts the world down)" if started else ""))
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        if started:
            world.shutdown()
    return 0


def _override(scenario, args: argparse.Namespace):
    """Command-line overrides, validated by the scenario model (so errors name the field)."""
    import dataclasses

    from lodestore.sim._scenario import parse_scenario
    world, players = {}, {}
    if args.seed is not None:
        world["seed"] = args.seed
    if args.duration is not None:
        world["duration"] = args.duration
    if args.time_scale is not None:
        world["time_scale"] = args.time_scale
    if args.players is not None:
        players["population"] = args.players
    if not world and not players:
        return scenario
    probe = parse_scenario(_toml_overrides(world, players), source="command line")  # validates the values
    return dataclasses.replace(
        scenario,
        world=dataclasses.replace(scenario.world, **{k: getattr(probe.world, k) for k in world}),
        players=dataclasses.replace(scenario.players, **{k: getattr(probe.players, k) for k in players}))


def _toml_overrides(world: dict, players: dict) -> str:
    lines = []
    if world:
        lines.append("[world]")
        lines += [f"{k} = {v!r}" for k, v in world.items()]
    if players:
        lines.append("[players]")
        lines += [f"{k} = {v!r}" for k, v in players.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

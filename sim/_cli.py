"""The `lodestore` command: `lodestore simulate SCENARIO.toml` (the main job) and `lodestore inspect DB ...`.

Owns: argument parsing and exit statuses. `simulate` exits 0 when every checker passed, 1 when one failed (the
counterexample is printed), 2 on a bad scenario, option or path (a message, no traceback), 3 when the checks passed
but the run is inconclusive (the harness could not keep up; the report's health says why), 130 when stopped early by
Ctrl-C (BindToClose, the checks and the report still ran; a second Ctrl-C abandons the run, with no report).

Never does: anything a library call could not do as well (it calls `sim.simulate` and `sim._inspect`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lodestore.sim._inspect import add_parser as add_inspect_parser
from lodestore.sim._runner import RunOptions, simulate
from lodestore.sim._scenario import load_scenario
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
    run.add_argument("--address", default=None,
                     help="join a running Ray cluster ('auto' from a cluster node); default: local Ray")
    run.add_argument("--in-process", action="store_true",
                     help="no Ray: everything in this process with a manual clock, deterministic from the seed")
    run.add_argument("--hosts", type=int, default=None, help="Ray actors the game servers are spread over "
                                                             "(default 2)")
    run.add_argument("--seed", type=int, default=None, help="override world.seed")
    run.add_argument("--duration", type=float, default=None, help="override world.duration (simulated seconds)")
    run.add_argument("--players", type=int, default=None, help="override players.population")
    run.add_argument("--time-scale", type=float, default=None, help="override world.time_scale")
    run.add_argument("--no-progress", action="store_true", help="plain progress lines even on a terminal")
    run.set_defaults(func=_simulate)
    add_inspect_parser(sub)
    return parser


def _simulate(args: argparse.Namespace) -> int:
    try:
        scenario = load_scenario(args.scenario)
        scenario = _override(scenario, args)
        options = RunOptions(out=args.out, engine="in-process" if args.in_process else "ray", address=args.address,
                             hosts=args.hosts, progress=False if args.no_progress else None)
    except (ConfigError, OSError) as exc:
        print(f"lodestore simulate: {exc}", file=sys.stderr)
        return 2
    try:
        result = simulate(scenario, options)
    except ConfigError as exc:
        print(f"lodestore simulate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nlodestore simulate: abandoned (no report)", file=sys.stderr)
        return 130
    for check in result.checks:
        if not check.ok:
            print(f"counterexample ({check.name}): {check.counterexample}", file=sys.stderr)
    for problem in result.report["health"]["problems"]:
        print(f"inconclusive: {problem}", file=sys.stderr)
    return result.exit_status


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

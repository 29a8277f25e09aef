"""`python -m lodestore.bench NAME [--quick]`: run one benchmark and print its JSON."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

BENCHMARKS = ("storage", "budget", "sessions", "tx", "sim", "cluster", "compare", "serve", "check")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lodestore.bench", description=__doc__)
    parser.add_argument("name", choices=BENCHMARKS)
    parser.add_argument("--quick", action="store_true", help="smaller run, for CI smoke checks")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    module = importlib.import_module(f"lodestore.bench.{args.name}")
    result = module.run(quick=args.quick)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run a scenario on the Ray cluster this script runs on: `lodestore simulate --address auto ARGS...`, for `ray submit`.

    ray submit cluster.yaml examples/cluster_run.py -- examples/scenarios/quickstart.toml --players 500

`ray submit` copies this file to the head's home directory and runs it there; the script first moves to the lodestore
checkout it imports (~/lodestore with cluster.yaml), so relative scenario paths and the report directory
(lodestore-runs/) are the checkout's, as with `cd ~/lodestore && lodestore simulate ...`. The arguments are those of
`lodestore simulate`; the exit status is its own: 0 every checker passed, 1 one failed, 2 bad scenario or option.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lodestore import sim
from lodestore.sim import main   # the `lodestore` command itself


def _checkout() -> Path | None:
    """The source checkout lodestore is installed from (`pip install -e`), or None for a regular install."""
    root = Path(sim.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


if __name__ == "__main__":
    checkout = _checkout()
    if checkout is not None:
        os.chdir(checkout)
    sys.exit(main(["simulate", "--address", "auto", *sys.argv[1:]]))

"""Where every generated id and unseeded random source of lodestore comes from: lock ids, transaction ids, lease
tags, record ids, retry jitter.

Outside a simulation they are random (`uuid4`, an OS-seeded `random.Random`). A virtual-time node (`storage._virtual`)
makes them a function of its seed: while it runs, `seeded(rng)` makes `new_id` and `new_rng` draw from its own
generator, so the same run on Ray or in one process gives the same ids, and so the same history.
"""

from __future__ import annotations

import random
import uuid
from contextlib import contextmanager
from typing import Iterator

__all__ = ["new_id", "new_rng", "seeded"]

_source: random.Random | None = None


def new_id(length: int = 32) -> str:
    """A fresh hex id of `length` characters (at most 32)."""
    if _source is None:
        return uuid.uuid4().hex[:length]
    return f"{_source.getrandbits(128):032x}"[:length]


def new_rng() -> random.Random:
    """A random source of its own (retry jitter): seeded from the node's generator in a simulation."""
    return random.Random() if _source is None else random.Random(_source.getrandbits(64))


@contextmanager
def seeded(rng: random.Random) -> Iterator[None]:
    """While inside, ids and random sources come from `rng` (one simulated node's turn)."""
    global _source
    saved, _source = _source, rng
    try:
        yield
    finally:
        _source = saved

"""Shared fixtures: one local Ray for the whole session (started only by tests that ask for it)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        started = True
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def ray_world(ray_session, tmp_path, request):
    """A world on the session's Ray (SQLite in tmp_path, no budgets), named after the test, shut down after it."""
    import zlib

    from lodestore.storage import World

    name = f"t{zlib.crc32(request.node.nodeid.encode()):08x}"   # unique per test, parametrized ones included
    world = World.start(name, backend="sqlite", path=str(tmp_path / "world.db"), budget=None)
    yield world
    world.shutdown()

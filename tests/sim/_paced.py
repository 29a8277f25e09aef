"""A small paced scenario for tests of outside callers of a running simulation: an hour at 10x (six wall minutes),
which a test ends (`RunOptions.stop`) once its calls are done."""

import contextlib
import io
import threading
import time

from lodestore.sim import RunOptions, parse_scenario, simulate


def paced_scenario(name: str, seed: int, extra: str = "") -> str:
    return f"""
[world]
name = "{name}"
duration = 3600
time_scale = 10
seed = {seed}

[servers]
count = 2
max_players = 10

[players]
population = 10
join_rate = 0.5
{extra}
"""

@contextlib.contextmanager
def playing(text: str, out, engine: str = "ray", stream=None):
    """Play scenario `text` in a thread; yields a dict that gets the run's "result" (or its "error"). Leaving the
    block ends the play (`RunOptions.stop`) and waits for the run's end."""
    done: dict = {}
    stop = threading.Event()
    options = RunOptions(out=out, engine=engine, progress=False, stream=stream or io.StringIO(), stop=stop)

    def run() -> None:
        try:
            done["result"] = simulate(parse_scenario(text), options)
        except BaseException as exc:   # the test's thread reports it
            done["error"] = exc

    player = threading.Thread(target=run)
    player.start()
    try:
        yield done
    finally:
        stop.set()
        player.join(timeout=300)
    assert "error" not in done, done.get("error")


def wait_until_open(name: str, done: dict, timeout: float = 120) -> None:
    """Until the paced Ray run of world `name` has opened its ingress (its start, not a behaviour under test)."""
    import ray

    from lodestore.storage import INGRESS_NAME, namespace_of
    deadline = time.monotonic() + timeout
    while True:
        assert "error" not in done, done.get("error")
        try:
            ray.get_actor(INGRESS_NAME, namespace=namespace_of(name))
            return
        except ValueError:
            assert time.monotonic() < deadline, f"world {name!r} did not open"
            time.sleep(0.2)


def stored(out, store: str, key: str):
    """What a finished run's world file (in its report directory `out`) holds at `store`/`key`."""
    from lodestore.storage import World
    world = World.in_process("stored", backend="sqlite", path=str(out / "world.db"), budget=None)
    try:
        return world.server("reader").datastores.get_data_store(store).get(key)[0]
    finally:
        world.shutdown()

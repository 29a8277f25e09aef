"""`python -m lodestore.bench serve`: Open Cloud requests per second through `lodestore serve`, against a world on
local Ray, with the world's own coroutine (`.aio`) client rate in the same run as the baseline.

A world (in memory, no request budgets: the figure is the HTTP layer's and the world's, not a budget's) starts on
local Ray; `lodestore serve` runs in a process of its own and joins it, as a user runs it. 32 concurrent clients
(aiohttp, keep-alive, on one event loop of this process) then `set` 1 KB values (v2 PATCH ...?allowMissing=true,
one write each) and `get` them (v2 GET ...@latest, what rblx-open-cloud's get_entry sends); the baseline is 32
coroutines of this process doing the same through a game server's `.aio` data store client. Each figure is the
median of 3 rounds; `http_vs_aio` is the ratio. There is no target: the figures say what the HTTP hop costs.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time

import aiohttp
import ray

from lodestore.storage import World

CLIENTS = 32
VALUE = {"blob": "x" * 1000}   # 1 KB of JSON
KEY = "lodestore-test-key"


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


async def _rate(op, count: int) -> float:
    """`count` calls of `op(i)` by `CLIENTS` concurrent workers, in calls per second."""
    next_i = iter(range(count))

    async def worker() -> None:
        for i in next_i:
            await op(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    return count / (time.perf_counter() - start)


async def _median(op, count: int, rounds: int = 3) -> float:
    await _rate(op, CLIENTS)   # warm: connections, actors, key hosts
    return round(statistics.median([await _rate(op, count) for _ in range(rounds)]), 1)


async def _aio_rates(world: World, keys: int, count: int) -> dict:
    store = world.server("bench-aio").datastores.get_data_store("bench-aio")

    async def set_(i: int) -> None:
        await store.aio.set(f"k{i % keys}", VALUE)

    async def get(i: int) -> None:
        await store.aio.get(f"k{i % keys}", use_cache=False)

    return {"set": await _median(set_, count), "get": await _median(get, count)}


async def _http_rates(url: str, keys: int, count: int) -> dict:
    base = f"{url}cloud/v2/universes/1/data-stores/bench-http/scopes/global/entries/"
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector, headers={"x-api-key": KEY}) as http:
        async def call(method: str, path: str, **kwargs) -> None:
            async with http.request(method, base + path, **kwargs) as answer:
                await answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"{method} {path}: {answer.status} {await answer.text()}")

        async def set_(i: int) -> None:
            await call("PATCH", f"k{i % keys}?allowMissing=true", json={"value": VALUE})

        async def get(i: int) -> None:
            await call("GET", f"k{i % keys}@latest")

        return {"set": await _median(set_, count), "get": await _median(get, count)}


def _wait_for(url: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    host, port = url.split("//")[1].rstrip("/").split(":")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"lodestore serve exited with {server.returncode}: {server.stderr.read()}")
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("lodestore serve did not start listening")


def run(quick: bool = False) -> dict:
    count, keys = (400, 100) if quick else (3000, 500)
    name = f"bench-serve-{os.getpid()}"
    world = World.start(name, backend="memory", budget=None, time_scale=1.0)
    port = _free_port()
    server = None
    try:
        address = ray.get_runtime_context().gcs_address
        # A driver joining a local Ray must take 127.0.0.1 as its node address too, as `World.start` does for it
        # (`storage._world._start_local_ray`); Ray reads the switch when it is imported.
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        server = subprocess.Popen([sys.executable, "-c", "import sys; from lodestore.sim import main; sys.exit(main())",
                                   "serve", "--world", name, "--port", str(port), "--address", address],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        url = f"http://127.0.0.1:{port}/"
        _wait_for(url, server)
        aio = asyncio.run(_aio_rates(world, keys, count))
        http = asyncio.run(_http_rates(url, keys, count))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
        world.shutdown()
    return {"benchmark": "serve", "clients": CLIENTS, "value_bytes": 1000, "requests_per_round": count,
            "keys": keys, "rounds": 3, "engine": "ray (local)", "baseline": "the world's .aio client",
            "requests_per_s": {"aio": aio, "http": http},
            "http_vs_aio": {op: round(http[op] / aio[op], 3) for op in ("set", "get")}}

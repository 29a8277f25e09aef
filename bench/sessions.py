"""Sessions: how many a machine holds, acknowledged saves per second, and load latency, through the Store API.

(a) `sessions_held`: sessions loaded and held in `per-server` placement over `servers` key actors, with lock refresh
    (every 60 s, TTL 90 s) and autosave (300 s) timers live on a real-time clock while loading and `hold_s` more; `memory_per_session_bytes` is the growth of
    the key actors' resident memory divided by the sessions. (b) `saves_per_s`: acknowledged `store.aio.save` calls
    per second end-to-end on fresh servers holding `saves` changed sessions (client -> key actor -> storage actor -> SQLite, synchronous=FULL), many in flight,
    against `raw_call_rate` (sequential do-nothing 1:1 Ray calls/s, the baseline); target >= 5x. (c) load latency
    p50/p99 of single blocking loads of new keys on an otherwise idle server.
Budgets are off (`budget=None`): this measures the machinery; budgets are what `python -m lodestore.bench budget` measures.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time

from lodestore import GameServer
from lodestore.bench._common import ensure_ray, raw_call_rate
from lodestore.storage import World

TARGET = 5.0
TEMPLATE = {"coins": 0, "level": 1, "items": ["starter-sword"], "settings": {"music": True}}


async def _in_chunks(calls, chunk: int) -> None:
    for lo in range(0, len(calls), chunk):
        await asyncio.gather(*(c() for c in calls[lo:lo + chunk]))


def _memory(servers: list[GameServer]) -> int:
    return sum(s.memory_bytes() for s in servers)


def run(quick: bool = False) -> dict:
    per_server, n_servers, hold_s, chunk = (2_500, 2, 5, 1_000) if quick else (25_000, 4, 60, 2_000)
    ensure_ray()
    raw = raw_call_rate(300 if quick else 1000)
    with tempfile.TemporaryDirectory() as tmp:
        world = World.start("bench-sessions", backend="sqlite", path=os.path.join(tmp, "sessions.db"), budget=None,
                            shards=2)
        try:
            servers = [GameServer(world, f"bench-{i}", players=per_server) for i in range(n_servers)]
            stores = [s.create_store("players", TEMPLATE) for s in servers]
            for store in stores:
                store.is_loaded("warm-up")          # start every key actor before measuring its memory
            before = _memory(servers)

            # (a) load and hold
            started = time.perf_counter()

            async def load_all() -> None:
                await asyncio.gather(*(_in_chunks([lambda s=store, k=f"s{i}-u{j}": s.aio.load(k)
                                                   for j in range(per_server)], chunk)
                                       for i, store in enumerate(stores)))

            asyncio.run(load_all())
            load_s = time.perf_counter() - started
            held = sum(len(store.loaded_keys()) for store in stores)
            time.sleep(hold_s)
            stats = [store.statistics()[0] for store in stores]
            after = _memory(servers)
            still_held = sum(len(store.loaded_keys()) for store in stores)

            for server in servers:                  # end (a) as crashed servers do: at once, nothing saved
                server.crash()

            # (b) acknowledged saves per second, on fresh servers
            servers = [GameServer(world, f"save-{i}", players=1_000) for i in range(n_servers)]
            stores = [s.create_store("players", TEMPLATE) for s in servers]
            saves = 5_000 if quick else 20_000
            keys = [(store, f"save-s{i}-u{j}") for j in range(saves // n_servers) for i, store in enumerate(stores)]

            def change(data):
                data["coins"] += 1
                return True

            async def save_round() -> float:
                await _in_chunks([lambda s=s, k=k: s.aio.update(k, change) for s, k in keys], chunk)
                t0 = time.perf_counter()
                await _in_chunks([lambda s=s, k=k: s.aio.save(k) for s, k in keys], chunk)
                return len(keys) / (time.perf_counter() - t0)

            asyncio.run(_in_chunks([lambda s=s, k=k: s.aio.load(k) for s, k in keys], chunk))
            save_rates = [asyncio.run(save_round()) for _ in range(3)]

            # (c) load latency of single blocking loads
            latencies = []
            for j in range(100 if quick else 300):
                t0 = time.perf_counter()
                stores[0].load(f"latency-{j}")
                latencies.append((time.perf_counter() - t0) * 1000)
            latencies.sort()
            for server in servers:
                server.crash()
        finally:
            world.shutdown()
    saves_per_s = statistics.median(save_rates)
    return {
        "benchmark": "sessions",
        "quick": quick,
        "servers": n_servers,
        "sessions_held": held,
        "sessions_still_held_after_hold": still_held,
        "load_all_s": round(load_s, 1),
        "loads_per_s": round(held / load_s, 1),
        "hold_s": hold_s,
        "lock_refreshes_during_hold": sum(s.counters.refreshes for s in stats),
        "autosaves_skipped_during_hold": sum(s.counters.saves_skipped for s in stats),
        "locks_lost": sum(s.counters.locks_lost for s in stats),
        "memory_per_session_bytes": round((after - before) / max(held, 1)),
        "raw_call_rate": round(raw, 1),
        "saves_per_s": round(saves_per_s, 1),
        "load_latency_ms": {"p50": round(latencies[len(latencies) // 2], 2),
                            "p99": round(latencies[int(len(latencies) * 0.99) - 1], 2)},
        "baseline": "raw_call_rate",
        "ratio": round(saves_per_s / raw, 2),
        "target": TARGET,
        "sessions_target": 100_000,
        "meets_target": saves_per_s / raw >= TARGET and (quick or held >= 100_000),
    }

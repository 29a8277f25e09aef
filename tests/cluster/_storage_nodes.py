"""Storage placement on a 3-node local Ray cluster: `python -m tests.cluster._storage_nodes DIR`.

Run in a subprocess by `test_cluster.py`. It checks, and prints as one JSON line:
- `storage="driver"`: every DataStore shard and the MemoryStore run on the driver's node, with one SQLite file;
- `storage="spread"`: shard i runs on the i-th node, pinned there with its own file; when a worker node goes, the
  keys of its shard fail with a typed DataStore error while the other shards keep serving; after the world is
  started again on the same files (the node back), every acknowledged write is there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ray

from tests.cluster._common import actor_context, start_cluster


def _node_of(handle) -> str:
    return actor_context(handle)[0]


def _datastore_shards(world) -> list:
    from lodestore.storage import datastore_name, namespace_of
    return [ray.get_actor(datastore_name(i), namespace=namespace_of(world.name)) for i in range(world.info.shards)]


def _shard_keys(shards: int, per_shard: int) -> dict[int, list[str]]:
    from lodestore.storage import shard_of
    out: dict[int, list[str]] = {i: [] for i in range(shards)}
    n = 0
    while any(len(v) < per_shard for v in out.values()):
        key = f"user_{n}"
        n += 1
        shard = shard_of(("players", "global", key), shards)
        if len(out[shard]) < per_shard:
            out[shard].append(key)
    return out


def main(tmp: Path) -> dict:
    from lodestore.storage import MEMORYSTORE_NAME, DataStoreError, World, namespace_of

    cluster, workers = start_cluster()
    out: dict = {}
    try:
        me = ray.get_runtime_context().get_node_id()

        world = World.start("driver-placed", path=str(tmp / "driver.db"), shards=3, budget=None)
        memorystore = ray.get_actor(MEMORYSTORE_NAME, namespace=namespace_of(world.name))
        out["driver"] = {"shards_here": [_node_of(h) == me for h in _datastore_shards(world)],
                         "memorystore_here": _node_of(memorystore) == me,
                         "files": sorted(p.name for p in tmp.glob("driver*.db"))}
        world.shutdown()

        path = tmp / "spread.db"
        world = World.start("spread-placed", path=str(path), shards=3, budget=None, storage="spread")
        nodes = [_node_of(h) for h in _datastore_shards(world)]
        memorystore = ray.get_actor(MEMORYSTORE_NAME, namespace=namespace_of(world.name))
        keys = _shard_keys(3, 5)
        store = world.server("writer").datastores.get_data_store("players")
        for shard, names in keys.items():
            for key in names:
                store.set(key, {"shard": shard})
        out["spread"] = {"distinct_nodes": len(set(nodes)), "pinned_as_planned": list(world.info.nodes) == nodes,
                         "memorystore_here": _node_of(memorystore) == me,
                         "files": sorted(p.name for p in tmp.glob("spread*.db"))}
        lost_shard = next(i for i, n in enumerate(nodes) if n != me)
        victim = next(w for w in workers if w.node_id == nodes[lost_shard])
        cluster.remove_node(victim)
        errors, served = [], 0
        for shard, names in keys.items():
            for key in names:
                try:
                    value, _ = store.get(key, False)
                    served += value == {"shard": shard}
                except DataStoreError as exc:
                    errors.append([shard, exc.code])
        out["after_loss"] = {"lost_shard": lost_shard, "errors": errors, "served": served}
        world.shutdown()

        cluster.add_node(num_cpus=1)   # the machine comes back (on one machine its disk never left)
        cluster.wait_for_nodes()
        world = World.start("spread-placed", path=str(path), shards=3, budget=None, storage="spread")
        store = world.server("reader").datastores.get_data_store("players")
        back = sum(store.get(key, False)[0] == {"shard": shard} for shard, names in keys.items() for key in names)
        out["restarted"] = {"read_back": back, "written": sum(len(v) for v in keys.values())}
        world.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))

"""Where a world's actors run when Ray has more than one node.

Owns the placement rules of the whole project, so every package places its actors the same way:

- The emulated cloud is pinned. A DataStore shard keeps its SQLite file on the disk of the node it runs on, so it
  is created with a hard node affinity: Ray restarts a crashed shard on the same node (the same file), and never on
  another node, where it would open an empty file and serve it as if the data were gone. Under `storage="driver"`
  (the default) every shard and the MemoryStore run on the node of the process that starts the world (the head,
  with `ray submit`); under `storage="spread"` shard i runs on the i-th alive node (in a stable order: the starting
  node first, then by IP address and node id) and keeps its own file there. The MemoryStore always runs on the
  starting node: it is memory, so it is pinned there rather than restarted empty elsewhere (an empty MemoryStore
  would hand a live session's lock to another server).
- Singletons (the budget actor, the coordinator) are not pinned: they have `max_restarts=-1`, Ray restarts them on
  any alive node, and they rebuild their state (the budget ledger conservatively, the coordinator from its markers).
- Game servers (key actors, the simulator's hosts) spread over the alive nodes, a node's loss being a crash of the
  game servers on it.

When a pinned actor's node is gone, its calls fail at once (`ActorUnschedulableError`, a `TransportFailure` for
clients): requests to that shard's keys fail with DataStore errors until the world is started again with the node
back. Everything acknowledged before is in the file on that node's disk.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

__all__ = ["STORAGE_PLACEMENTS", "actor_options", "alive_nodes", "here", "namespace_of", "pinned", "storage_nodes",
           "spread_nodes"]

STORAGE_PLACEMENTS = ("driver", "spread")


def namespace_of(world: str) -> str:
    """The Ray namespace of a world's named actors."""
    return f"lodestore-{world}"


def actor_options(name: str | None, world: str, *, restart: bool = True, node: str | None = None,
                  max_concurrency: int = 1, spread: bool = False) -> dict[str, Any]:
    """Ray options for every actor of lodestore, from one place. `num_cpus=0`: these actors mostly wait, and a 2-core
    laptop must be able to place all of them; Ray never retries a call (`max_task_retries=0`: a batch or a
    transaction must not run twice). A `name` makes a detached, named actor in the world's namespace (storage
    shards, the MemoryStore, the budget actor, the coordinator); without one the actor belongs to its owner (a game
    server's key actor, a simulator host). `restart`: Ray restarts it when it dies (singletons and storage), or not
    (a game server plays its crash). `node` pins it and its restarts to one node; `spread` spreads such actors over
    the nodes."""
    options: dict[str, Any] = dict(num_cpus=0, max_restarts=-1 if restart else 0, max_task_retries=0,
                                   max_concurrency=max_concurrency)
    if name is not None:
        options.update(name=name, namespace=namespace_of(world), lifetime="detached")
    if node is not None:
        options.update(pinned(node))
    elif spread:
        options["scheduling_strategy"] = "SPREAD"
    return options


def here() -> str:
    """The node id of this process (the driver, a task or an actor)."""
    return ray.get_runtime_context().get_node_id()


def alive_nodes() -> list[str]:
    """Node ids of the alive nodes that can run actors: this node first, then by IP address and node id, so the same
    set of machines gives the same order."""
    me = here()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    nodes.sort(key=lambda n: (n["NodeID"] != me, n.get("NodeManagerAddress", ""), n["NodeID"]))
    return [n["NodeID"] for n in nodes]


def pinned(node_id: str) -> dict[str, Any]:
    """Actor options that keep an actor, and every restart of it, on `node_id`."""
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False)}


def storage_nodes(placement: str, shards: int) -> tuple[str, ...]:
    """The node of each DataStore shard; the MemoryStore goes with the first."""
    if placement == "driver":
        return (here(),) * shards
    nodes = alive_nodes()
    return tuple(nodes[i % len(nodes)] for i in range(shards))


def spread_nodes(count: int) -> list[str]:
    """Nodes for `count` game-server actors, round-robin over the alive nodes. This node, which runs the storage
    under the default placement, comes last: the game servers take the other nodes first."""
    nodes = alive_nodes()
    nodes = nodes[1:] + nodes[:1]
    return [nodes[i % len(nodes)] for i in range(count)]

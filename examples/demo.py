"""A first look at lodestore: a world on local Ray + SQLite, two game servers, a few DataStore and MemoryStore calls,
an UpdateAsync race, versions and a tombstone; then session-locked stores (the Store API): a player moving between
servers and a server that crashes. Run: `python examples/demo.py`."""

from __future__ import annotations

import threading

from lodestore import GameServer
from lodestore.storage import World


def main() -> None:
    world = World.start("demo", backend="sqlite", path="lodestore-data/demo.db", time_scale=60)
    try:
        lobby, arena = world.server("lobby-1", players=20), world.server("arena-7", players=12)
        players_on_lobby = lobby.datastores.get_data_store("players")
        players_on_arena = arena.datastores.get_data_store("players")

        version = players_on_lobby.set("user_42", {"coins": 100, "inventory": ["sword"]}, user_ids=[42],
                                       metadata={"schema": 1})
        print(f"set user_42 -> version {version}")

        # Two servers add coins to one key at the same time: UpdateAsync's compare-and-set re-runs the loser.
        def add_coins(store, n):
            for _ in range(n):
                store.update("user_42", lambda old, info: {**old, "coins": old["coins"] + 1})

        threads = [threading.Thread(target=add_coins, args=(s, 50)) for s in (players_on_lobby, players_on_arena)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        value, info = players_on_arena.get("user_42", use_cache=False)
        conflicts = sum(s.datastores.statistics().update_conflicts for s in (lobby, arena))
        print(f"after 100 concurrent updates: coins={value['coins']} (expected 200), "
              f"update conflicts re-run: {conflicts}, user ids {info.user_ids}, metadata {info.metadata}")

        leaderboard = lobby.datastores.get_ordered_data_store("wins")
        for user, wins in {"ana": 12, "bo": 40, "cy": 7, "di": 40}.items():
            leaderboard.set(user, wins)
        print("top wins:", leaderboard.get_sorted(ascending=False, page_size=3).items)

        locks = lobby.memorystores.get_hash_map("locks")
        holder = locks.update("user_42", lambda old: old or "lobby-1:session-1", expiration=90)
        print(f"lock on user_42 held by {holder!r}")

        previous, _ = players_on_lobby.remove("user_42")
        print(f"removed user_42 (had {previous['coins']} coins); get now -> {players_on_lobby.get('user_42', False)}")
        print("versions:", [(v.version[-16:], v.is_deleted) for v in players_on_lobby.list_versions("user_42").items])
        print("keys:", players_on_lobby.list_keys().items)
        budget = lobby.datastores.get_request_budget("StandardWrite")
        print(f"lobby-1 write budget left: {budget} (60 + 40 x 20 players per minute, burst 100, cap 3 minutes)")
        print("lobby-1 throttle queues:", lobby.datastores.queue_sizes())
        print("shard statistics:", world.statistics())
        sessions(world)
    finally:
        world.shutdown()


def sessions(world: World) -> None:
    """Two game servers hand one player over (a teleport), then one of them crashes with unsaved changes."""
    lobby, arena = GameServer(world, "lobby-2", players=10), GameServer(world, "arena-8", players=10)
    template = {"coins": 0, "items": []}
    on_lobby = lobby.create_store("profiles", template, lock_ttl=6, lock_refresh=2)
    on_arena = arena.create_store("profiles", template, lock_ttl=6, lock_refresh=2, lock_wait=60)

    def grant(item):
        def fn(data):
            data["items"].append(item)
            data["coins"] += 10
            return True
        return fn

    on_lobby.load("user_7")
    on_lobby.update("user_7", grant("hat"))
    print("lobby holds user_7:", on_lobby.get("user_7"), "- lock active:", on_arena.probe_lock_active("user_7"))
    on_lobby.unload("user_7")                     # teleport: final save, lock released
    on_arena.load("user_7")                       # the arena gets exactly what the lobby saved
    on_arena.update("user_7", grant("boots"))
    on_arena.save("user_7")                       # forced save, as before granting a purchase
    on_arena.update("user_7", grant("cape"))      # not saved yet...
    arena.crash()                                 # ...and the server dies: its lock expires by TTL
    on_lobby.load("user_7")                       # waits for the dead server's lock (simulated TTL 6 s)
    print("after the arena crashed, the lobby loads:", on_lobby.get("user_7"), "(the cape was never saved)")
    lobby.shutdown()


if __name__ == "__main__":
    main()

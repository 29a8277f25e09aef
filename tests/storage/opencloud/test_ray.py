"""The served API over a world on Ray (the way `lodestore serve` runs it): the app's event loop awaits the world's
actors through the same `.aio` clients."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import rblxopencloud

from tests.storage.opencloud.conftest import serve


def test_clients_on_ray_set_get_and_increment_concurrently(ray_world):
    for served in serve(ray_world):
        store = rblxopencloud.Experience(1, "lodestore-test-key").get_datastore("players")
        store.set_entry("user_1", {"coins": 5}, users=[9])
        value, info = store.get_entry("user_1")
        assert value == {"coins": 5} and info.users == [9]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: store.increment_entry("visits", 1), range(32)))
        assert ray_world.server("game").datastores.get_data_store("players").get("visits")[0] == 32

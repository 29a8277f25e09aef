"""An Open Cloud server for the tests: `create_app` over an in-process world, served by uvicorn on 127.0.0.1 on a
free port in a background thread, and rblx-open-cloud's module-level session pointed at it by a transport adapter
(reference/opencloud.md: the client itself is not changed)."""

from __future__ import annotations

import pytest
import requests
import rblxopencloud

from lodestore.storage import ManualClock, World
from lodestore.storage.opencloud import ServerThread, create_app

ROBLOX = "https://apis.roblox.com/"
START_MS = 1_780_000_000_000


class ToLocal(requests.adapters.HTTPAdapter):
    """A transport adapter that sends what the client addresses to https://apis.roblox.com/ to `base` instead."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base

    def send(self, request, **kwargs):
        request.url = self.base + request.url[len(ROBLOX):]
        return super().send(request, **kwargs)


class Served:
    """What a test gets: the world, the app, its base URL, and raw-HTTP helpers (requests, not the client)."""

    def __init__(self, world: World, app, url: str) -> None:
        self.world, self.app, self.url = world, app, url
        self.http = requests.Session()
        self.http.trust_env = False

    def request(self, method: str, path: str, key: str | None = "lodestore-test-key", **kwargs) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["x-api-key"] = key
        return self.http.request(method, self.url + path.lstrip("/"), headers=headers, timeout=30, **kwargs)

    def statistics(self):
        return self.app.state.opencloud.statistics()


def serve(world: World, **options):
    """Serve `world`; rblx-open-cloud's session points at it while the context is open."""
    app = create_app(world, **options)
    server = ServerThread(lambda: app).start(wait=True)
    session = rblxopencloud.http_session
    saved = session.trust_env
    try:
        session.mount(ROBLOX, ToLocal(server.url))
        session.trust_env = False
        yield Served(world, app, server.url)
    finally:
        session.adapters.pop(ROBLOX, None)
        session.trust_env = saved
        server.stop()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START_MS)


@pytest.fixture
def served(clock):
    """A world without request budgets (the v1 limits and the world's own budgets are tested on their own)."""
    yield from serve(World.in_process(clock=clock, budget=None))


@pytest.fixture
def experience(served):
    return rblxopencloud.Experience(1, "lodestore-test-key")

"""The Open Cloud app served by uvicorn from a thread of this process: a scenario's `[serve]` (the world of a
virtual-time run lives in the simulation's driver) and the tests use it; `lodestore serve` runs uvicorn in its own
process instead."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Callable

import uvicorn

from lodestore.storage import ConfigError

__all__ = ["ServerThread", "check_listen", "LOOPBACK_HOSTS"]

log = logging.getLogger("lodestore.opencloud")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
"""Hosts that keep a server on this machine; anything else serves plain HTTP beyond it (worth a warning)."""


def check_listen(host: str, port: int) -> None:
    """ConfigError unless `host:port` can be listened on now (so a refusal comes before anything starts)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
        raise ConfigError(f"port must be from 1 to 65535, got {port!r}", field="port")
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", field="port") from None


class ServerThread:
    """uvicorn serving the app that `make_app()` builds, on `host:port` (0: a free port), in a daemon thread.

    The app is built in the thread, before uvicorn starts: building it may call the world (its Open Cloud
    client registers), and a world behind an in-process ingress answers only while the caller's thread goes on
    stepping the simulation. So `start` waits for the server only when asked (`wait=True`)."""

    def __init__(self, make_app: Callable[[], Any], host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.app: Any = None
        self.error: BaseException | None = None
        self._make_app = make_app
        self._server: uvicorn.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lodestore-opencloud", daemon=True)

    def _run(self) -> None:
        try:
            self.app = self._make_app()
            self._server = uvicorn.Server(uvicorn.Config(self.app, host=self.host, port=self.port,
                                                         log_level="warning", lifespan="off"))
            self._ready.set()
            self._server.run()
        except BaseException as exc:   # the thread's end: kept for `stop` and the caller to see
            self.error = exc
            log.error("the Open Cloud server stopped: %s", exc)
        finally:
            self._ready.set()

    def start(self, wait: bool = False, timeout: float = 30.0) -> "ServerThread":
        self._thread.start()
        if wait:
            deadline = time.monotonic() + timeout
            while not self.started:
                if self.error is not None or not self._thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the Open Cloud server did not start: {self.error}")
                time.sleep(0.01)
        return self

    @property
    def started(self) -> bool:
        return self._server is not None and self._server.started

    @property
    def url(self) -> str:
        """The base URL (the port uvicorn bound when 0 was asked for; only once started)."""
        port = self.port
        if port == 0 and self.started:
            port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}/"

    def stop(self, timeout: float = 30.0) -> None:
        self._ready.wait(timeout)
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(timeout)

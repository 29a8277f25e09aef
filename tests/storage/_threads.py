"""Helpers for tests that run blocking clients on threads beside a manual clock."""

from __future__ import annotations

import threading
import time


def wait_until(predicate, timeout=10.0):
    """Wait for other threads to reach a state (not a timer: the simulated clock is manual)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for threads"
        time.sleep(0.005)


def start(fn, *args):
    """Run `fn(*args)` on a daemon thread; the dict it returns gets "value" or "error" when the call ends."""
    result = {}

    def body():
        try:
            result["value"] = fn(*args)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            result["error"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, result

"""MessagingService's publish over Open Cloud: rblx-open-cloud 2.3.0's `publish_message` (v2 `:publishMessage`,
unmodified) and v1's `messaging-service` path (openblox's) as raw HTTP, reaching a game server's subscription."""

from __future__ import annotations

import threading

import pytest
import rblxopencloud
from rblxopencloud import Forbidden, HttpException

from lodestore.storage import World
from tests.storage.opencloud.conftest import serve

V1 = "messaging-service/v1/universes/1/topics"


class Inbox:
    """A game server's subscription to `topic`, collecting what arrives."""

    def __init__(self, world: World, topic: str) -> None:
        self.got: list[dict] = []
        self._arrived = threading.Condition()
        self.subscription = world.server("game").messaging.subscribe(topic, self._on_message)

    def _on_message(self, message: dict) -> None:
        with self._arrived:
            self.got.append(message)
            self._arrived.notify_all()

    def wait_for(self, n: int) -> list[dict]:
        with self._arrived:   # a liveness bound only: the messages are due once the clock passed their delay
            assert self._arrived.wait_for(lambda: len(self.got) >= n, timeout=30), self.got
            return list(self.got)


def test_the_client_publishes_to_a_live_servers_subscription(experience, served, clock):
    inbox = Inbox(served.world, "announcements")
    experience.publish_message("announcements", "maintenance in 5 minutes")
    assert served.world.messaging_statistics().published == 1
    clock.advance(2)   # Roblox delivers within 1-2 s
    [message] = inbox.wait_for(1)
    assert message["Data"] == "maintenance in 5 minutes"
    inbox.subscription.disconnect()


def test_v1_publishes_too_and_both_refuse_bad_topics_and_messages(served, clock):
    inbox = Inbox(served.world, "trades")
    answer = served.request("POST", f"{V1}/trades", json={"message": '{"from": 1, "to": 2}'})
    assert answer.status_code == 200 and answer.json() == {}
    clock.advance(2)
    assert [m["Data"] for m in inbox.wait_for(1)] == ['{"from": 1, "to": 2}']
    refusals = [("POST", f"{V1}/{'t' * 81}", {"message": "x"}),                        # topic over 80 characters
                ("POST", f"{V1}/trades", {"message": "x" * 2000}),                     # over 1 kB
                ("POST", f"{V1}/trades", {"message": {"not": "text"}}),
                ("POST", f"{V1}/trades", {}),
                ("POST", "cloud/v2/universes/1:publishMessage", {"topic": "", "message": "x"}),
                ("POST", "cloud/v2/universes/1:publishMessage", {"topic": 5, "message": "x"}),
                ("POST", "cloud/v2/universes/1:publishMessage", {"topic": "trades", "message": ["x"]})]
    for method, path, body in refusals:
        refused = served.request(method, path, json=body)
        assert refused.status_code == 400, (path, body)
        assert refused.json()["code"] == "INVALID_ARGUMENT" and refused.json()["message"]
    assert served.world.messaging_statistics().published == 1   # nothing refused was sent
    inbox.subscription.disconnect()


def test_publishing_needs_its_permission(clock):
    for served in serve(World.in_process(clock=clock, budget=None), api_keys=["admin", "reader:datastores.read"]):
        with pytest.raises(Forbidden):
            rblxopencloud.Experience(1, "reader").publish_message("announcements", "hi")
        refused = served.request("POST", f"{V1}/announcements", key="reader", json={"message": "hi"})
        assert refused.status_code == 403 and set(refused.json()) == {"code", "message"}
        assert served.world.messaging_statistics().published == 0
        with pytest.raises(HttpException):   # a bad topic through the client: 400
            rblxopencloud.Experience(1, "admin").publish_message("t" * 81, "hi")

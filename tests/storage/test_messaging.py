"""MessagingService: delivery on the simulated clock, Roblox's limits, the best-effort faults, Open Cloud's publish, in
process with a manual clock (and one test on Ray, across processes)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from lodestore.storage import (ConfigError, FaultConfig, Latency, ManualClock, MessagingServiceError, Scheduler,
                               ServerClosedError, World)
from lodestore.storage import messaging as msg


class Rig:
    """An in-process world on a manual clock, made on the running loop, and that loop's scheduler."""

    def __init__(self, faults: FaultConfig | None = None) -> None:
        self.clock = ManualClock()
        self.world = World.in_process("msg", clock=self.clock, budget=None, faults=faults)
        self.scheduler = Scheduler(self.clock)
        self.t0 = self.clock.now()

    async def advance(self, seconds: float) -> None:
        await self.scheduler.advance(seconds)

    def stats(self) -> msg.MessagingStatistics:
        return self.world.messaging_statistics()


def run(coro):
    return asyncio.run(coro)


# --------------------------------------------------------------------------------------------- delivery

def test_a_message_reaches_every_subscribed_server_within_1_to_2_seconds_as_roblox_passes_it():
    async def main():
        rig = Rig()
        a, b, c = rig.world.server("A"), rig.world.server("B"), rig.world.server("C")
        got = {"A": [], "B": [], "C": []}
        await a.messaging.aio.subscribe("news", got["A"].append)
        await b.messaging.aio.subscribe("news", got["B"].append)
        await c.messaging.aio.subscribe("other", got["C"].append)
        await rig.advance(10)
        sent_at = rig.clock.now()
        await a.messaging.aio.publish("news", {"text": "double coins", "n": [1, 2]})
        await rig.advance(0.999)
        assert got == {"A": [], "B": [], "C": []}        # the default delay is 1-2 s
        await rig.advance(1.001)
        envelope = {"Data": {"text": "double coins", "n": [1, 2]}, "Sent": sent_at / 1000}
        assert got == {"A": [envelope], "B": [envelope], "C": []}   # the publisher too, when subscribed
        assert got["A"][0] is not got["B"][0] and got["A"][0]["Data"] is not got["B"][0]["Data"]
        stats = rig.stats()
        assert (stats.published, stats.delivered, stats.dropped, stats.subscriptions) == (1, 2, {}, 3)
    run(main())


def test_the_delay_is_a_fault_knob_and_the_same_under_the_same_seed():
    async def arrivals(seed: int) -> list[int]:
        rig = Rig(FaultConfig(seed=seed, messaging_delay=Latency.uniform(0, 10_000)))
        at = []
        for job in ("A", "B", "C", "D"):
            await rig.world.server(job).messaging.aio.subscribe("t", lambda m: at.append(rig.clock.now() - rig.t0))
        await rig.world.aio.publish("t", 1)
        await rig.advance(11)
        return sorted(at)

    first = run(arrivals(7))     # each world on a loop of its own (a loop's scheduler keeps one manual clock)
    assert len(first) == 4 and all(0 <= t <= 10_000 for t in first) and len(set(first)) > 1
    assert run(arrivals(7)) == first
    assert run(arrivals(8)) != first

    async def main():
        rig = Rig(FaultConfig(messaging_delay=Latency.fixed(5_000)))
        at = []
        await rig.world.server("A").messaging.aio.subscribe("t", lambda m: at.append(rig.clock.now() - rig.t0))
        await rig.world.server("B").messaging.aio.publish("t", "x")
        await rig.advance(60)
        assert at == [5_000]
    run(main())


def test_the_drop_rate_loses_messages_and_counts_them():
    async def main():
        rig = Rig(FaultConfig(seed=3, messaging_drop_rate=0.5))
        got = []
        await rig.world.server("A").messaging.aio.subscribe("t", got.append)
        sender = rig.world.server("B").messaging
        for n in range(200):
            await sender.aio.publish("t", n)
        await rig.advance(3)
        stats = rig.stats()
        assert stats.published == 200 and stats.delivered == len(got)
        assert stats.dropped == {"lost": 200 - len(got)} and 60 < len(got) < 140
        rig.world.set_faults(FaultConfig(messaging_drop_rate=1.0))
        await sender.aio.publish("t", "gone")
        await rig.advance(3)
        assert "gone" not in [m["Data"] for m in got] and rig.stats().dropped["lost"] == 201 - len(got)
    run(main())


def test_disconnect_stops_callbacks_even_for_a_message_already_on_its_way():
    async def main():
        rig = Rig()
        a = rig.world.server("A")
        got, kept = [], []
        sub = await a.messaging.aio.subscribe("t", got.append)
        await a.messaging.aio.subscribe("t", kept.append)
        await a.messaging.aio.publish("t", 1)
        sub.disconnect()
        sub.disconnect()                                  # harmless
        await rig.advance(3)
        assert got == [] and [m["Data"] for m in kept] == [1] and not sub.connected
        assert rig.stats().subscriptions == 1
    run(main())


def test_a_failing_callback_does_not_stop_the_others_and_a_coroutine_callback_is_awaited():
    async def main():
        rig = Rig()
        a = rig.world.server("A")
        got = []

        async def later(m):
            await asyncio.sleep(0)
            got.append(m["Data"])
        await a.messaging.aio.subscribe("t", lambda m: 1 / 0)
        await a.messaging.aio.subscribe("t", later)
        await rig.world.aio.publish("t", "x")
        await rig.advance(3)
        assert got == ["x"] and a.messaging.callback_errors == 1
    run(main())


def test_a_closed_server_receives_nothing_more_and_cannot_publish():
    async def main():
        rig = Rig()
        a, b = rig.world.server("A"), rig.world.server("B")
        got = []
        sub = await a.messaging.aio.subscribe("t", got.append)
        await b.messaging.aio.publish("t", 1)
        await a.aio.close()
        await rig.advance(3)
        assert got == [] and not sub.connected and rig.stats().servers == 1
        with pytest.raises(ServerClosedError):
            await a.messaging.aio.publish("t", 2)
        with pytest.raises(ServerClosedError):
            await a.messaging.aio.subscribe("t", got.append)
    run(main())


def test_open_cloud_publish_reaches_subscribers_from_outside_any_server():
    async def main():
        rig = Rig()
        got = []
        await rig.world.server("A").messaging.aio.subscribe("announcements", got.append)
        await rig.world.aio.publish("announcements", "maintenance in 5 minutes")
        await rig.advance(3)
        assert [m["Data"] for m in got] == ["maintenance in 5 minutes"] and rig.stats().published == 1
    run(main())


def test_the_blocking_api_delivers_when_a_manual_clock_passes_the_due_time():
    clock = ManualClock()
    world = World.in_process("sync", clock=clock, budget=None)     # no loop: the runtime's background loop
    arrived = threading.Event()
    got = []

    def on_message(m):
        got.append(m)
        arrived.set()
    sub = world.server("A").messaging.subscribe("t", on_message)
    world.server("B").messaging.publish("t", [1, "two"])
    world.publish("t", None)
    assert not arrived.wait(0.2)                      # the clock has not moved: nothing is due
    clock.advance(2)
    assert arrived.wait(10)
    while len(got) < 2:
        arrived.clear()
        assert arrived.wait(10)
    assert sorted(m["Data"] is None for m in got) == [False, True] and [1, "two"] in [m["Data"] for m in got]
    sub.disconnect()
    assert world.messaging_statistics().subscriptions == 0


# ------------------------------------------------------------------------------------------------ limits

def test_topics_and_messages_follow_roblox_rules_and_a_refusal_sends_nothing():
    async def main():
        rig = Rig()
        a = rig.world.server("A")
        for topic, why in (("", "1-80"), ("x" * 81, "1-80"), (5, "string")):
            with pytest.raises(MessagingServiceError) as err:
                await a.messaging.aio.publish(topic, 1)
            assert err.value.name == msg.INVALID_TOPIC and why in err.value.message
            with pytest.raises(MessagingServiceError):
                await a.messaging.aio.subscribe(topic, print)
        await a.messaging.aio.publish("x" * 80, "x" * 1022)          # 1,024 bytes of JSON: the most
        with pytest.raises(MessagingServiceError) as err:
            await a.messaging.aio.publish("t", "x" * 1023)
        assert err.value.name == msg.MESSAGE_TOO_LARGE and "1025 bytes" in err.value.message
        with pytest.raises(MessagingServiceError) as err:
            await a.messaging.aio.publish("t", "é" * 512)             # 1,024 characters, 1,026 bytes
        assert err.value.name == msg.MESSAGE_TOO_LARGE
        for bad in (float("nan"), {1: "x"}, {"f": object()}):
            with pytest.raises(MessagingServiceError) as err:
                await a.messaging.aio.publish("t", bad)
            assert err.value.name == msg.INVALID_MESSAGE
        with pytest.raises(MessagingServiceError) as err:
            await rig.world.aio.publish("t", "x" * 2000)
        assert err.value.name == msg.MESSAGE_TOO_LARGE
        with pytest.raises(MessagingServiceError) as err:
            await a.messaging.aio.subscribe("t", "not a function")
        assert err.value.name == msg.INVALID_CALLBACK
        assert rig.stats().published == 1 and rig.stats().subscriptions == 0
    run(main())


def test_a_server_sends_at_most_600_plus_240_per_player_a_minute():
    async def main():
        rig = Rig()
        quiet, busy = rig.world.server("quiet"), rig.world.server("busy", players=2)
        for n in range(600):
            await quiet.messaging.aio.publish("t", n)
        with pytest.raises(MessagingServiceError) as err:
            await quiet.messaging.aio.publish("t", "one too many")
        assert err.value.name == msg.PUBLISH_THROTTLED
        for n in range(600 + 240 * 2):
            await busy.messaging.aio.publish("t", n)     # its own budget, grown by its players
        with pytest.raises(MessagingServiceError):
            await busy.messaging.aio.publish("t", "one too many")
        await rig.advance(60)
        await quiet.messaging.aio.publish("t", "a minute later")
        stats = rig.stats()
        assert stats.published == 600 + 1080 + 1 and stats.throttled == 2
    run(main())


def test_receptions_over_the_topic_and_game_limits_are_dropped_and_counted():
    async def main():
        rig = Rig()
        got = []
        a = rig.world.server("A").messaging
        await a.aio.subscribe("t", got.append)                                 # one server: 40 + 80 x 1 per topic
        for n in range(130):
            await rig.world.aio.publish("t", n)
        await rig.advance(3)
        assert len(got) == 120 and rig.stats().dropped == {"topic_limit": 10}
        await rig.advance(60)                                                  # a new minute
        got.clear()
        for topic in ("u", "v", "w", "x", "y", "z"):
            await a.aio.subscribe(topic, got.append)
        for topic in ("u", "v", "w", "x", "y"):
            for n in range(120):
                await rig.world.aio.publish(topic, n)
        for n in range(10):
            await rig.world.aio.publish("z", n)                                # the game's 400 + 200 x 1 is spent
        await rig.advance(3)
        assert len(got) == 600 and rig.stats().dropped == {"game_limit": 10, "topic_limit": 10}
    run(main())


def test_the_receive_limits_grow_with_the_servers_the_service_knows():
    async def main():
        rig = Rig()
        got = []
        for job in ("A", "B"):
            await rig.world.server(job).messaging.aio.subscribe("t", got.append)
        sender = rig.world.server("C").messaging                  # a publisher counts too: 3 servers
        for n in range(141):                                      # 40 + 80 x 3 = 280 receptions: 140 messages
            await sender.aio.publish("t", n)
        await rig.advance(3)
        assert len(got) == 280 and rig.stats().dropped == {"topic_limit": 2} and rig.stats().servers == 3
    run(main())


def test_a_server_holds_at_most_20_plus_8_per_player_subscriptions_and_asks_240_a_minute():
    async def main():
        rig = Rig()
        a = rig.world.server("A", players=1)
        subs = [await a.messaging.aio.subscribe(f"t{n}", print) for n in range(28)]
        with pytest.raises(MessagingServiceError) as err:
            await a.messaging.aio.subscribe("t", print)
        assert err.value.name == msg.TOO_MANY_SUBSCRIPTIONS
        for _ in range(212 // 2):                      # 28 + 212 = 240 requests this minute
            subs[0].disconnect()
            subs[0] = await a.messaging.aio.subscribe("t0", print)
            subs[0].disconnect()
            subs[0] = await a.messaging.aio.subscribe("t0", print)
        subs[0].disconnect()
        with pytest.raises(MessagingServiceError) as err:
            await a.messaging.aio.subscribe("t0", print)
        assert err.value.name == msg.SUBSCRIBE_THROTTLED
        await rig.advance(60)
        await a.messaging.aio.subscribe("t0", print)
        assert rig.stats().subscriptions == 28
    run(main())


def test_messaging_faults_are_checked():
    with pytest.raises(ConfigError):
        FaultConfig(messaging_drop_rate=1.5)
    with pytest.raises(ConfigError):
        FaultConfig(messaging_delay=1000)
    assert not FaultConfig(messaging_drop_rate=0.5).active      # not a DataStore fault
    assert FaultConfig().messaging_delay == Latency.uniform(1000, 2000)


# ---------------------------------------------------------------------------------------------------- Ray

class _Listener:
    """A game server in another process: subscribes on its own loop, publishes on request."""

    def __init__(self, world_name: str) -> None:
        self.server = World.connect(world_name).server("remote")
        self.got = []

    async def listen(self, topic: str) -> None:
        await self.server.messaging.aio.subscribe(topic, lambda m: self.got.append(m["Data"]))

    async def publish(self, topic: str, message) -> None:
        await self.server.messaging.aio.publish(topic, message)

    async def received(self) -> list:
        return list(self.got)


def test_on_ray_a_message_crosses_processes_both_ways(ray_world):
    import time

    import ray
    ray_world.set_faults(FaultConfig(messaging_delay=Latency.fixed(0)))
    listener = ray.remote(_Listener).options(num_cpus=0).remote(ray_world.name)
    ray.get(listener.listen.remote("to-remote"))
    here, arrived = [], threading.Event()
    driver = ray_world.server("driver")
    driver.messaging.subscribe("to-driver", lambda m: (here.append(m["Data"]), arrived.set()))
    driver.messaging.publish("to-remote", {"hello": "remote"})
    ray.get(listener.publish.remote("to-driver", "hello driver"))
    assert arrived.wait(30) and here == ["hello driver"]
    deadline = time.monotonic() + 30
    while not ray.get(listener.received.remote()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ray.get(listener.received.remote()) == [{"hello": "remote"}]
    assert ray_world.messaging_statistics().delivered == 2
    ray.kill(listener)


# ---------------------------------------------------------------------------------------------- the engine

def test_the_engine_queues_a_delivery_per_subscribing_server_and_forgets_a_topic_nobody_holds():
    clock = ManualClock()
    engine = msg.MessagingEngine(clock)
    engine.subscribe("A", 0, "PS_1")
    engine.subscribe("A", 0, "PS_1")                          # two subscriptions, one reception per message
    engine.publish("B", 0, "PS_1", '{"LoadCount":1}')
    [delivery] = engine.take("A")
    assert delivery.topic == "PS_1" and delivery.message == '{"LoadCount":1}' and delivery.sent_ms == clock.now()
    assert clock.now() + 1000 <= delivery.due_ms <= clock.now() + 2000
    assert engine.take("A") == [] and engine.waiting("A")      # the inbox is emptied; its long poll would wait
    engine.unsubscribe("A", "PS_1")
    assert engine.waiting("A")
    engine.unsubscribe("A", "PS_1")
    assert not engine.waiting("A")                            # nothing held: the poll answers at once
    engine.publish("B", 0, "PS_1", "1")
    assert engine.take("A") == [] and engine.statistics().published == 2 and engine.statistics().delivered == 1
    clock.advance(59.999)
    for _ in range(598):                                       # B's two publishes still count: 598 more
        engine.publish("B", 0, "x", "1")
    with pytest.raises(MessagingServiceError):
        engine.publish("B", 0, "x", "1")
    clock.advance(0.001)                                       # the first two are a minute old: out
    engine.publish("B", 0, "x", "1")

"""The service rides out a broker restart, and its subscriber parses packets split anywhere."""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
from conftest import wait_for

from nodefleet.contracts import Topics
from nodefleet.embedded.mosquitto import Mosquitto
from nodefleet.wire import AckingSubscriber, BrokerAddress, Client, packets

from .helpers import make_settings, start, stop
from .test_queries_and_schema import _ask


def test_packet_reader_handles_any_split():
    stream = b"".join([
        bytes((packets.PUBLISH | 0x02,)) + bytes((2 + 5 + 2 + 3,)) + b"\x00\x05a/b/c\x00\x07abc",
        bytes((packets.PUBLISH,)) + b"\x82\x01" + b"\x00\x01t" + b"x" * 127,  # two-byte remaining length (130)
        packets.PINGREQ_PACKET,
    ])
    for cut in range(1, len(stream)):
        reader = packets.PacketReader()
        got = list(reader.feed(stream[:cut])) + list(reader.feed(stream[cut:]))
        assert [first & 0xF0 for first, _ in got] == [packets.PUBLISH, packets.PUBLISH, packets.PINGREQ]
        assert packets.parse_publish(*got[0]) == ("a/b/c", b"abc", 1, 7)
        assert packets.parse_publish(*got[1]) == ("t", b"x" * 127, 0, 0)


async def test_broker_restart_is_ridden_out(database, topics: Topics):
    broker = Mosquitto()
    broker.start()
    settings = make_settings(broker, database, topics)
    task = await start(settings)
    db = await asyncpg.connect(database)
    try:
        broker.stop()
        await wait_for(lambda: not task.done(), timeout=1)
        broker = Mosquitto(port=broker.port)
        broker.start()
        # This broker keeps no sessions across a restart: the service must subscribe again by itself.
        async def stored() -> bool:
            async with Client(BrokerAddress.parse(broker.url), client_id="restart-pub") as mqtt:
                body = {"v": 1, "seq": int(time.time() * 1000), "ts": time.time(), "readings": {"t": 1}}
                await mqtt.publish(topics.telemetry("r1"), json.dumps(body), qos=1)
            return await db.fetchval("SELECT count(*) FROM telemetry") > 0

        await wait_for(stored, timeout=20, interval=0.5)
        devices = await wait_for(lambda: _ask(broker, topics, "devices", {}), timeout=20)
        assert [d["node"] for d in devices] == ["r1"]
    finally:
        await db.close()
        await stop(task)
        broker.stop()


async def test_subscriber_with_a_full_buffer_still_subscribes_then_drains_in_order(mosquitto, topics: Topics):
    address = BrokerAddress.parse(mosquitto.url)
    topic = topics.telemetry("b1")
    client_id = f"acking-{time.time_ns()}"

    async def connected(buffer_limit: int) -> tuple[AckingSubscriber, asyncio.Task[None]]:
        subscriber = AckingSubscriber(address, client_id=client_id, filters=[topic], buffer_limit=buffer_limit)
        task = asyncio.create_task(subscriber.run())
        await asyncio.wait_for(subscriber.subscribed.wait(), 5)
        return subscriber, task

    subscriber, task = await connected(5)
    await _stop(task)
    async with Client(address, client_id=f"pub-{time.time_ns()}") as mqtt:
        for seq in range(200):
            await mqtt.publish(topic, str(seq), qos=1)
    # 200 messages wait in the session; a buffer of 5 must not keep SUBACK unread.
    subscriber, task = await connected(5)
    try:
        got: list[bytes] = []
        while len(got) < 200:
            batch = await asyncio.wait_for(subscriber.batch(50, 0.01), 5)
            got += [m.payload for m in batch]
            subscriber.ack(batch)
        assert got == [str(seq).encode() for seq in range(200)]
        assert subscriber.pauses >= 1
    finally:
        await _stop(task)
    # Everything was acknowledged: the session holds nothing more.
    subscriber, task = await connected(5)
    try:
        await asyncio.sleep(0.3)
        assert subscriber.buffered == 0
    finally:
        await _stop(task)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass

"""The acking subscriber on a real broker: a full buffer, held acknowledgements, the session kept."""

from __future__ import annotations

import asyncio
import time

from nodefleet.contracts import Topics
from nodefleet.wire import AckingSubscriber, BrokerAddress, Client


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

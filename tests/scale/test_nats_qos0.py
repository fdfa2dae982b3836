"""QoS 0 node traffic on the NATS engine: the queue-group path of ``JetStreamSubscriber``.

QoS 0 publishes never enter the JetStream stream; two subscribers of one
group take them from the plain subjects through a NATS queue group and split
them, while the QoS 1 copies on those subjects are left to the durable
consumer (else every QoS 1 message would be stored twice).

An earlier test of this path hung: it published right after ``subscribed``
and waited, without a bound, for every QoS 0 message.  A queue subscription
is interest, not storage: the SUB was not yet flushed to our own server, and
the other servers learn of it over the routes a moment later; what they took
before was dropped, as QoS 0 allows, and the wait never ended.  Now
``subscribed`` waits for the flush, this test sends a probe through every
server until one arrives (interest everywhere), and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import pytest

from nodefleet.contracts import NodeTopic, Topics
from nodefleet.embedded.nats import NatsCluster
from nodefleet.wire import BrokerAddress, Client
from nodefleet.wire.jetstream import JetStreamSubscriber
from nodefleet.wire.subscriber import Inbound

pytestmark = pytest.mark.timeout(60)

QOS0_PER_SERVER = 600
QOS1_PER_SERVER = 60


class Collector:
    """Takes batches from one subscriber, acknowledging each, until cancelled."""

    def __init__(self, subscriber: JetStreamSubscriber) -> None:
        self.subscriber = subscriber
        self.got: list[Inbound] = []

    async def run(self) -> None:
        while True:
            try:
                batch = await asyncio.wait_for(self.subscriber.batch(1000, 0.05), 1.0)
            except TimeoutError:
                continue
            self.got.extend(batch)
            self.subscriber.ack(batch)


async def _until(predicate, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} within {timeout:g} s")
        await asyncio.sleep(0.05)


async def _stream(topics: Topics, clients: list[Client], collectors: list[Collector]) -> list[Inbound]:
    def received(topic: str) -> int:
        return sum(m.topic == topic for c in collectors for m in c.got)

    # A probe through every server until one arrives: the group's interest has reached them all.
    for i, client in enumerate(clients):
        probe = topics.telemetry(f"probe-{i}")
        for _ in range(100):
            await client.publish(probe, b'{"probe": true}', qos=0)
            try:
                await _until(lambda: received(probe) > 0, 0.1, "probe")
                break
            except AssertionError:
                continue
        else:
            raise AssertionError(f"no QoS 0 probe through server {i} arrived in 100 tries")

    async def publish(i: int, client: Client) -> None:
        for seq in range(QOS0_PER_SERVER):
            await client.publish(topics.telemetry(f"zero-{i}"), json.dumps({"seq": seq}).encode(), qos=0)
        # QoS 1 last: its PUBACK says the server took everything this client sent before it.
        await asyncio.wait_for(asyncio.gather(*(
            client.publish(topics.telemetry(f"one-{i}"), json.dumps({"seq": seq}).encode(), qos=1)
            for seq in range(QOS1_PER_SERVER))), 10)

    await asyncio.gather(*(publish(i, c) for i, c in enumerate(clients)))
    expected = 3 * (QOS0_PER_SERVER + QOS1_PER_SERVER)

    def measured() -> list[Inbound]:
        return [m for c in collectors for m in c.got if "probe-" not in m.topic]

    await _until(lambda: len(measured()) >= expected, 15, f"not all {expected} messages arrived")
    await asyncio.sleep(0.5)  # a doubled QoS 1 copy would have come by now
    return measured()


async def test_qos0_is_split_by_the_queue_group_and_qos1_comes_once(topics: Topics):
    group = f"ingest-{uuid.uuid4().hex[:6]}"
    with NatsCluster(3) as cluster:
        subscribers = [JetStreamSubscriber(cluster.url, consumer=group, filters=[topics.all_nodes(NodeTopic.TELEMETRY)],
                                           ack_wait=5, connect_timeout=3) for _ in range(2)]
        collectors = [Collector(s) for s in subscribers]
        tasks = [asyncio.create_task(t) for s, c in zip(subscribers, collectors) for t in (s.run(), c.run())]
        try:
            async with contextlib.AsyncExitStack() as stack:
                for subscriber in subscribers:
                    await asyncio.wait_for(subscriber.subscribed.wait(), 20)
                clients = [await stack.enter_async_context(Client(
                    BrokerAddress.parse(cluster.mqtt_url(i)), client_id=f"q0-{i}-{uuid.uuid4().hex[:6]}"))
                    for i in range(3)]
                messages = await _stream(topics, clients, collectors)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=5)

    expected = 3 * (QOS0_PER_SERVER + QOS1_PER_SERVER)
    keys = [(m.topic, json.loads(m.payload)["seq"]) for m in messages]
    assert len(keys) == len(set(keys)) == expected, f"{len(keys) - len(set(keys))} duplicates"
    zero = [m for m in messages if "/zero-" in m.topic]
    one = [m for m in messages if "/one-" in m.topic]
    assert len(zero) == 3 * QOS0_PER_SERVER and all(m.packet_id == 0 for m in zero), "QoS 0 from the queue group"
    assert len(one) == 3 * QOS1_PER_SERVER and all(m.packet_id for m in one), "QoS 1 only from the stream"
    split = [sum("/zero-" in m.topic for m in c.got) for c in collectors]
    assert all(share > 0 for share in split), f"the queue group did not split QoS 0: {split}"
    assert sum(s.acked for s in subscribers) == 3 * QOS1_PER_SERVER

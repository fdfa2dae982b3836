"""The one reconnect policy: a broker that goes away and comes back.

The acking subscriber, the fast publisher and a ``Client`` session (as each
service runs its own) all ride it out through :class:`Reconnect` with its
``Backoff``; what they see while the broker is away are our own errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import aiomqtt
import pytest
from conftest import wait_for

from nodefleet.backoff import Backoff
from nodefleet.embedded.mosquitto import Mosquitto, free_port
from nodefleet.errors import NodefleetError
from nodefleet.wire import (
    AckingSubscriber,
    BrokerAddress,
    BrokerUnavailable,
    Client,
    ConnectionLost,
    NotSent,
    Publisher,
    Reconnect,
    WireError,
)


def fast() -> Backoff:
    return Backoff(first=0.05, most=0.4, jitter=0.0)


@contextlib.asynccontextmanager
async def running(*coroutines):
    tasks = [asyncio.create_task(c) for c in coroutines]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_subscriber_and_publisher_ride_out_a_broker_restart_with_the_one_backoff():
    broker = Mosquitto(port=free_port())
    broker.start()
    address = BrokerAddress(broker.host, broker.port)
    topic = f"wire-{uuid.uuid4().hex[:8]}/r"
    subscriber = AckingSubscriber(address, client_id=f"rx-{uuid.uuid4().hex[:8]}", filters=[topic], keepalive=2,
                                  backoff=fast())
    publisher = Publisher(address, client_id=f"tx-{uuid.uuid4().hex[:8]}", keepalive=2, backoff=fast())
    try:
        async with running(subscriber.run(), publisher.run()):
            await asyncio.wait_for(subscriber.subscribed.wait(), 10)
            await asyncio.wait_for(publisher.connected.wait(), 10)
            for link in (subscriber.reconnect, publisher.reconnect):
                assert type(link) is Reconnect and isinstance(link.backoff, Backoff)
                assert (link.connections, link.failures) == (1, 0)

            broker.stop()
            await wait_for(lambda: not subscriber.subscribed.is_set() and not publisher.connected.is_set())
            with pytest.raises(NotSent):  # ours, at the boundary
                publisher.publish([(topic, b"lost")], qos=1)
            # While the broker is away each one retries, and its Backoff pauses longer each time.
            await wait_for(lambda: subscriber.reconnect.failures >= 3 and publisher.reconnect.failures >= 3)
            for link in (subscriber.reconnect, publisher.reconnect):
                assert isinstance(link.last_error, BrokerUnavailable), link.last_error
                assert isinstance(link.last_error, NodefleetError)
                assert not isinstance(link.last_error, (OSError, aiomqtt.MqttError))
                assert link.backoff.delay > link.backoff.first

            broker.start()
            await asyncio.wait_for(subscriber.subscribed.wait(), 10)
            await asyncio.wait_for(publisher.connected.wait(), 10)
            assert subscriber.reconnect.connections == 2 and publisher.reconnect.connections == 2
            # The links work again, end to end: the publisher's QoS 1 message is acknowledged and received.
            await asyncio.wait_for(publisher.publish([(topic, b"after")], qos=1), 10)
            batch = await asyncio.wait_for(subscriber.batch(10, 0.05), 10)
            assert [m.payload for m in batch] == [b"after"]
            assert subscriber.ack(batch) == 1
    finally:
        broker.stop()


async def test_a_client_session_rides_out_a_broker_restart_and_sees_only_our_errors():
    broker = Mosquitto(port=free_port())
    broker.start()
    address = BrokerAddress(broker.host, broker.port)
    topic = f"wire-{uuid.uuid4().hex[:8]}/s"
    policy = Reconnect(address, event="test_connection_lost", backoff=fast())
    sessions: list[Client] = []
    seen: list[bytes] = []
    ended: list[BaseException] = []

    async def session() -> None:
        async with Client(address, client_id=f"s-{uuid.uuid4().hex[:8]}", keepalive=2) as mqtt:
            await mqtt.subscribe(topic, qos=1)
            sessions.append(mqtt)
            policy.up()
            try:
                async for message in mqtt.messages:
                    seen.append(message.payload)
            except BaseException as exc:
                ended.append(exc)
                raise

    try:
        async with running(policy.run(session)):
            await wait_for(lambda: policy.connections == 1)
            broker.stop()
            await wait_for(lambda: policy.failures >= 2)
            # The message loop ended with our ConnectionLost, the next attempts with BrokerUnavailable.
            assert isinstance(ended[0], ConnectionLost) and not isinstance(ended[0], aiomqtt.MqttError)
            assert isinstance(policy.last_error, BrokerUnavailable)
            with pytest.raises(WireError):
                await sessions[0].publish(topic, b"x", qos=1)
            broker.start()
            await wait_for(lambda: policy.connections == 2)
            async with Client(address, client_id=f"p-{uuid.uuid4().hex[:8]}") as other:
                await other.publish(topic, b"back", qos=1)
            await wait_for(lambda: seen == [b"back"])
    finally:
        broker.stop()


async def test_connect_failures_are_ours():
    dead = BrokerAddress("127.0.0.1", free_port())
    with pytest.raises(BrokerUnavailable) as caught:
        async with Client(dead, client_id="nobody"):
            pass
    assert not isinstance(caught.value, aiomqtt.MqttError)


async def test_a_broker_that_hangs_up_or_stays_silent_before_connack():
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        await asyncio.sleep(5)
        writer.close()

    for handler, expected in ((hang_up, ConnectionLost), (silent, BrokerUnavailable)):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        address = BrokerAddress("127.0.0.1", server.sockets[0].getsockname()[1])
        subscriber = AckingSubscriber(address, client_id="rx", filters=["a/b"], connect_timeout=0.5, backoff=fast())
        try:
            async with running(subscriber.run()):
                await wait_for(lambda: subscriber.reconnect.failures >= 1)
                assert type(subscriber.reconnect.last_error) is expected, subscriber.reconnect.last_error
                assert not subscriber.subscribed.is_set()
        finally:
            server.close()

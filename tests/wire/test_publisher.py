"""The fast publisher against both real brokers: batches arrive whole, QoS 1 is acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import broker_security
import pytest

from nodefleet import wire
from nodefleet.embedded.mosquitto import Mosquitto, free_port
from nodefleet.wire import BrokerAddress, NotSent, Publisher


@contextlib.asynccontextmanager
async def running(publisher: Publisher):
    task = asyncio.create_task(publisher.run())
    try:
        yield publisher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_batch_arrives_whole_and_is_acknowledged(broker):
    address = BrokerAddress(broker.host, broker.port)
    await batch_round_trip(address, address)


async def batch_round_trip(tx: BrokerAddress, rx_address: BrokerAddress, count: int = 3000) -> None:
    """``count`` messages published by a Publisher on ``tx``, two thirds QoS 1: all arrive at a client on
    ``rx_address`` and the QoS 1 batch is acknowledged."""
    topic = f"pub-{uuid.uuid4().hex[:8]}"
    sent = [(f"{topic}/{i % 7}", f"message {i}".encode()) for i in range(count)]
    split = count * 2 // 3
    async with wire.Client(rx_address, client_id=f"rx-{uuid.uuid4().hex[:8]}") as rx:
        await rx.subscribe(f"{topic}/#", qos=1)
        async with running(Publisher(tx, client_id=f"tx-{uuid.uuid4().hex[:8]}", keepalive=5)) as publisher:
            await asyncio.wait_for(publisher.connected.wait(), 10)
            acked = publisher.publish(sent[:split], qos=1)
            publisher.publish(sent[split:], qos=0)
            got = []
            async with asyncio.timeout(20):
                async for message in rx.messages:
                    got.append((str(message.topic), bytes(message.payload)))
                    if len(got) == len(sent):
                        break
            assert sorted(got) == sorted(sent)
            await asyncio.wait_for(acked, 5)
            assert publisher.unacked == 0


async def test_not_connected_is_not_sent(secured_broker):
    good = BrokerAddress(secured_broker.host, secured_broker.port, *broker_security.SERVICE)
    bad = BrokerAddress(secured_broker.host, secured_broker.port, broker_security.SERVICE[0], "wrong")
    async with running(Publisher(bad, client_id=f"tx-{uuid.uuid4().hex[:8]}")) as publisher:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(publisher.connected.wait(), 1.5)
        with pytest.raises(NotSent):
            publisher.publish([("a/b", b"x")], qos=1)
    async with running(Publisher(good, client_id=f"tx-{uuid.uuid4().hex[:8]}")) as publisher:
        await asyncio.wait_for(publisher.connected.wait(), 10)
        publisher.publish([("a/b", b"x")], qos=1)
        with pytest.raises(ValueError):
            publisher.publish([("a/b", b"x")], qos=2)


async def test_reconnects_after_the_broker_restarts():
    broker = Mosquitto(port=free_port())
    broker.start()
    address = BrokerAddress(broker.host, broker.port)
    try:
        async with running(Publisher(address, client_id=f"tx-{uuid.uuid4().hex[:8]}", keepalive=5)) as publisher:
            await asyncio.wait_for(publisher.connected.wait(), 10)
            broker.stop()
            async with asyncio.timeout(10):
                while publisher.connected.is_set():
                    await asyncio.sleep(0.02)
            with pytest.raises(NotSent):
                publisher.publish([("a/b", b"x")], qos=1)
            broker.start()
            await asyncio.wait_for(publisher.connected.wait(), 20)
            async with wire.Client(address, client_id=f"rx-{uuid.uuid4().hex[:8]}") as rx:
                await rx.subscribe("a/b", qos=1)
                publisher.publish([("a/b", b"after")], qos=1)
                async with asyncio.timeout(10):
                    message = await anext(aiter(rx.messages))
                assert bytes(message.payload) == b"after"
    finally:
        broker.stop()


async def test_a_connection_lost_before_the_acks_fails_the_batch():
    # Fault injection: a "broker" that accepts the connection, reads the publishes and hangs up without a PUBACK.
    got = asyncio.Event()

    async def silent_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # CONNECT
        writer.write(b"\x20\x02\x00\x00")
        await writer.drain()
        await reader.read(1 << 16)
        got.set()
        writer.close()

    server = await asyncio.start_server(silent_broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running(Publisher(BrokerAddress("127.0.0.1", port), client_id="tx", keepalive=5)) as publisher:
            await asyncio.wait_for(publisher.connected.wait(), 10)
            acked = publisher.publish([("a/b", b"x"), ("a/c", b"y")], qos=1)
            assert publisher.unacked == 2
            await asyncio.wait_for(got.wait(), 10)
            with pytest.raises(NotSent, match="before the broker acknowledged"):
                await asyncio.wait_for(acked, 10)
    finally:
        server.close()

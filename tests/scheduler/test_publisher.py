"""The scheduler's publish-only connection against both real brokers: batches arrive whole, QoS 1 is acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

import broker_security
from nodefleet import mqtt
from nodefleet.mqtt import BrokerAddress
from services.scheduler.publisher import NotSent, Publisher, connect_packet, publish_packet


@contextlib.asynccontextmanager
async def running(publisher: Publisher):
    task = asyncio.create_task(publisher.run())
    try:
        yield publisher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_packets_follow_mqtt_311():
    # CONNECT: "MQTT", level 4, clean session + user name + password, keepalive 30.
    assert connect_packet("c", 30, "u", "p") == b"\x10\x13\x00\x04MQTT\x04\xc2\x00\x1e\x00\x01c\x00\x01u\x00\x01p"
    assert publish_packet(b"a/b", b"hi", 1, 258) == b"\x32\x09\x00\x03a/b\x01\x02hi"
    assert publish_packet(b"a/b", b"hi", 0, 0) == b"\x30\x07\x00\x03a/bhi"
    # A remaining length over 127 takes two bytes.
    assert publish_packet(b"t", b"x" * 200, 0, 0)[:3] == b"\x30\xcb\x01"


async def test_a_batch_arrives_whole_and_is_acknowledged(broker):
    address = BrokerAddress(broker.host, broker.port)
    topic = f"pub-{uuid.uuid4().hex[:8]}"
    sent = [(f"{topic}/{i % 7}", f"message {i}".encode()) for i in range(3000)]
    async with mqtt.client(address, client_id=f"rx-{uuid.uuid4().hex[:8]}") as rx:
        await rx.subscribe(f"{topic}/#", qos=1)
        async with running(Publisher(address, client_id=f"tx-{uuid.uuid4().hex[:8]}", keepalive=5)) as publisher:
            await asyncio.wait_for(publisher.connected.wait(), 10)
            publisher.publish(sent[:2000], qos=1)
            publisher.publish(sent[2000:], qos=0)
            got = []
            async with asyncio.timeout(20):
                async for message in rx.messages:
                    got.append((str(message.topic), bytes(message.payload)))
                    if len(got) == len(sent):
                        break
            assert sorted(got) == sorted(sent)
            async with asyncio.timeout(5):
                while publisher.unacked:
                    await asyncio.sleep(0.02)


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

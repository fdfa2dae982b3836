"""bench.delay_proxy: adds the round trip it is asked for, keeps every byte in order, loopback only."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time

import pytest

from bench.delay_proxy import DelayProxy

RTT = 0.050


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_adds_the_round_trip_and_keeps_the_bytes():
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    upstream = server.sockets[0].getsockname()
    async with server, DelayProxy(upstream, rtt=RTT) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        trips = []
        for _ in range(5):
            started = time.monotonic()
            writer.write(b"x")
            await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(1), 2) == b"x"
            trips.append(time.monotonic() - started)
        # Each direction waits rtt/2: the echo's round trip is the rtt, plus loopback's fraction of a millisecond.
        assert RTT * 0.95 <= min(trips) and max(trips) < RTT + 0.040, trips

        # 2 MiB through and back: every byte, in order; the delay is paid once, not per chunk.
        data = random.Random(3).randbytes(2 << 20)
        started = time.monotonic()

        async def send() -> None:
            writer.write(data)
            await writer.drain()

        sender = asyncio.create_task(send())
        back = await asyncio.wait_for(reader.readexactly(len(data)), 20)
        took = time.monotonic() - started
        await sender
        assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
        assert took < 5.0, took
        writer.close()
        await asyncio.sleep(0.1)
    assert proxy.connections == 1
    assert proxy.bytes_up == proxy.bytes_down == len(data) + 5


async def test_refuses_to_forward_off_loopback():
    with pytest.raises(ValueError, match="loopback"):
        DelayProxy(("192.0.2.1", 1883), rtt=RTT)

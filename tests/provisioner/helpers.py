"""Small helpers for the provisioner tests: connecting as a node, an admin watcher, HTTP over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from background import in_background

from nodefleet import wire
from nodefleet.contracts import Info, Topics

from .conftest import ADMIN


def node_client(broker: Any, username: str, password: str) -> wire.Client:
    address = wire.BrokerAddress(broker.host, broker.port, username, password)
    return wire.Client(address, client_id=f"{username}-{uuid.uuid4().hex[:6]}")


class Watcher:
    """An admin client collecting every message under the given filters."""

    def __init__(self, client: wire.Client) -> None:
        self.client = client
        self.messages: list[tuple[str, bytes, bool]] = []
        self.arrived = asyncio.Event()

    async def feed(self) -> None:
        async for message in self.client.messages:
            self.messages.append((str(message.topic), bytes(message.payload), message.retain))  # type: ignore[arg-type]
            self.arrived.set()

    def payloads(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.messages if t == topic]

    async def wait(self, topic: str, match=lambda p: True, timeout: float = 10.0) -> bytes:
        async with asyncio.timeout(timeout):
            while True:
                for payload in self.payloads(topic):
                    if match(payload):
                        return payload
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def watching(broker: Any, *filters: str) -> AsyncIterator[Watcher]:
    async with node_client(broker, *ADMIN) as client:
        watcher = Watcher(client)
        for topic_filter in filters:
            await client.subscribe(topic_filter, qos=1)
        async with in_background(watcher.feed()):
            yield watcher


async def come_online(client: wire.Client, topics: Topics, node: str, chip_id: str,
                      caps: tuple[str, ...] = ("switch", "temperature", "humidity")) -> None:
    """What the firmware does on connect: retained online, then its retained info."""
    await client.publish(topics.status(node), "online", qos=1, retain=True)
    info = Info(chip_id=chip_id, fw="1.0.0", caps=list(caps))
    await client.publish(topics.info(node), info.model_dump_json(), qos=1, retain=True)


async def http(port: int, method: str, path: str, body: Any = None, *, raw: bytes | None = None) -> tuple[int, Any]:
    """One HTTP/1.1 request to 127.0.0.1:port; (status, decoded JSON body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if raw is None:
            data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
            raw = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(data)}\r\n\r\n").encode() + data
        writer.write(raw)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(payload) if payload else None

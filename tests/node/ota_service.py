"""The service side of an OTA download, for the receiver's tests: the pure pieces that exist, on a real broker.

It publishes the retained offer (``Manifest.offer`` tagged with the node's key), takes the node's wants and
sends what ``services.ota.stream.Stream`` schedules: units two nodes lack on the release's shared stream, the
rest on the node's ``ota/data``.  It counts every frame it sends, per unit, keeps their order (``log``), can
damage chosen frames and can stop after a number of frames (``limit``, to cut a node's power mid-download).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable

from background import in_background

from nodefleet import wire
from nodefleet.contracts import Topics
from nodefleet.contracts.ota import Offer, Want, device_key
from nodefleet.contracts.topics import OtaTopic
from nodefleet.ota_release import Release
from services.ota.stream import Stream

MASTER = b"receiver-test-master-key"


def node_key(node: str) -> bytes:
    return device_key(MASTER, node)


class OtaService:
    def __init__(self, client: wire.Client, topics: Topics, release: Release, nodes: list[str]) -> None:
        self.client = client
        self.topics = topics
        self.release = release
        self.nodes = nodes
        m = release.manifest
        self.units = release.units()
        self.table = self.units - len(m.blocks)
        self.stream_topic = topics.ota_stream(m.version)
        self.stream = Stream(m.version, table=self.table, blocks=len(m.blocks))
        self.sent: collections.Counter[int] = collections.Counter()
        self.wants: list[tuple[str, Want]] = []
        self.damage: Callable[[int, int, bytes], bytes] | None = None
        """(unit, times sent before, frame) -> the frame to send."""
        self.paused = False
        self.log: list[int] = []
        """Every unit sent, in order."""
        self.limit: int | None = None
        """Send nothing once ``len(log)`` reaches this (``limit_reached`` is set then)."""
        self.limit_reached = asyncio.Event()
        self._lock = asyncio.Lock()

    def offer(self, node: str, *, force: bool = False, key: bytes | None = None) -> Offer:
        return self.release.manifest.offer(node=node, key=key or node_key(node), stream=self.stream_topic,
                                           force=force)

    async def publish_offer(self, node: str, offer: Offer | dict | None = None, **kw) -> None:
        body = offer if isinstance(offer, dict) else (offer or self.offer(node, **kw)).model_dump(mode="json")
        await self.client.publish(self.topics.ota(node, OtaTopic.OFFER), json.dumps(body), qos=1, retain=True)

    async def withdraw(self, node: str) -> None:
        await self.client.publish(self.topics.ota(node, OtaTopic.OFFER), b"", qos=1, retain=True)

    async def feed(self) -> None:
        loop = asyncio.get_running_loop()
        async for message in self.client.messages:
            topic = str(message.topic)
            node = topic.split("/")[-3]
            want = Want.model_validate_json(bytes(message.payload))
            self.wants.append((node, want))
            if want.release != self.stream.release:
                continue
            self.stream.want(node, want, now=loop.time())
            await self.pump()

    async def pump(self) -> None:
        loop = asyncio.get_running_loop()
        async with self._lock:
            while not self.paused:
                if self.limit is not None and len(self.log) >= self.limit:
                    self.limit_reached.set()
                    return
                send = self.stream.next(now=loop.time())
                if send is None:
                    return
                frame = self.release.frame(send.unit)
                if self.damage is not None:
                    frame = self.damage(send.unit, self.sent[send.unit], frame)
                self.sent[send.unit] += 1
                self.log.append(send.unit)
                topic = self.stream_topic if send.to is None else self.topics.ota(send.to, OtaTopic.DATA)
                await self.client.publish(topic, frame, qos=0)

    def stop_after(self, frames: int) -> None:
        """Send at most ``frames`` more frames, then hold (until ``resume``)."""
        self.limit = len(self.log) + frames
        self.limit_reached.clear()

    async def resume(self) -> None:
        self.limit = None
        self.paused = False
        await self.pump()

    def wants_of(self, node: str, since: int = 0) -> list[Want]:
        return [w for n, w in self.wants[since:] if n == node]

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            await self.pump()


@contextlib.asynccontextmanager
async def serving(broker_url: str, topics: Topics, release: Release, nodes: list[str]) -> AsyncIterator[OtaService]:
    client = wire.Client(wire.BrokerAddress.parse(broker_url), client_id=f"ota-{uuid.uuid4().hex[:8]}", nodelay=True)
    async with client:
        service = OtaService(client, topics, release, nodes)
        for node in nodes:
            await client.subscribe(topics.ota(node, OtaTopic.WANT), qos=0)
        async with in_background(service.feed()), in_background(service.tick()):
            try:
                yield service
            finally:
                for node in nodes:
                    with contextlib.suppress(Exception):
                        await service.withdraw(node)

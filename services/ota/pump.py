"""Frames out: asks each release's stream for the next frame until none has credit, and writes them in batches.

A batch goes to the broker in one socket write on the frame publisher (QoS 0,
docs/ota.md); shared frames on ``fleet/ota/data/<release>``, repairs on the
node's ``ota/data``.  Credit bounds what is out at any time (at most one
window per member), so the pump never runs ahead of the nodes.  While the
publisher is down frames are not sent; the members' stall wants (2 s) grant
them again (``Stream.want``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from nodefleet.contracts.topics import OtaTopic, Topics
from nodefleet.logging import get_logger
from nodefleet.wire import NotSent, Publisher

from .engine import Engine

log = get_logger(__name__)


@dataclass
class PumpStats:
    shared_frames: int = 0
    shared_bytes: int = 0
    repair_frames: int = 0
    repair_bytes: int = 0
    not_sent: int = 0
    started: float = field(default_factory=time.monotonic)


class Pump:
    def __init__(self, engine: Engine, publisher: Publisher, topics: Topics, *, batch: int) -> None:
        self.engine = engine
        self.publisher = publisher
        self.topics = topics
        self.batch = batch
        self.stats = PumpStats()
        self.woken = asyncio.Event()

    def wake(self) -> None:
        self.woken.set()

    def _collect(self, now: float) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        for version, stream in self.engine.streams.items():
            release = self.engine.releases[version]
            while len(out) < self.batch:
                send = stream.next(now=now)
                if send is None:
                    break
                frame = release.frame(send.unit)
                if send.to is None:
                    out.append((self.topics.ota_stream(version), frame))
                    self.stats.shared_frames += 1
                    self.stats.shared_bytes += len(frame)
                else:
                    out.append((self.topics.ota(send.to, OtaTopic.DATA), frame))
                    self.stats.repair_frames += 1
                    self.stats.repair_bytes += len(frame)
        return out

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            held = [s.held_until - now for s in self.engine.streams.values() if s.held_until > now]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.woken.wait(), min(held) if held else None)
            self.woken.clear()
            while batch := self._collect(time.monotonic()):
                try:
                    self.publisher.publish(batch, qos=0)
                except NotSent as exc:
                    self.stats.not_sent += len(batch)
                    log.warning("ota_frames_not_sent", frames=len(batch), error=str(exc))
                    break
                await asyncio.sleep(0)  # wants and requests get their turn between batches

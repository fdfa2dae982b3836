"""The discovery queue: openHAB / Home Assistant discovery published behind the configs of nodes coming online."""

from __future__ import annotations

import asyncio

from nodefleet.logging import get_logger

from .publish import Publish

log = get_logger(__name__)

DISCOVERY_MAX_DEFER = 2.0
"""Longest wait (s) of a discovery batch behind nodes being provisioned."""


class Announcer:
    def __init__(self, publish: Publish) -> None:
        self.publish = publish
        self._queue: asyncio.Queue[list[tuple[str, str]]] = asyncio.Queue()
        self.provisioning = 0  # nodes being provisioned now: their configs go first

    def put(self, batch: list[tuple[str, str]]) -> None:
        self._queue.put_nowait(batch)

    async def run(self) -> None:
        """Publish queued discovery messages until cancelled (a failed batch is retried after a pause)."""
        while True:
            batch = await self._queue.get()
            # Nodes coming online go first: a burst's configs are not queued behind discovery.
            waited = 0.0
            while self.provisioning and waited < DISCOVERY_MAX_DEFER:
                await asyncio.sleep(0.01)
                waited += 0.01
            while True:
                try:
                    await asyncio.gather(*(self.publish(topic, body, True) for topic, body in batch))
                    break
                except Exception as exc:  # noqa: BLE001 - the broker is away; its next session gets them
                    log.warning("discovery_publish_failed", error=str(exc) or type(exc).__name__)
                    await asyncio.sleep(1.0)
            self._queue.task_done()

    async def idle(self, timeout: float = 30.0) -> None:
        """Wait until every queued discovery message went out, so a removal is not overtaken by one."""
        async with asyncio.timeout(timeout):
            await self._queue.join()

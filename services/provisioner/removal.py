"""Removing a node (revoked: its credentials, retained topics and discovery gone) and expiring unclaimed registrations.

A removal is one database transaction wrapped around the broker-side work
(credentials, retained publishes), so a failure leaves nothing half-way.
"""

from __future__ import annotations

import asyncio

from nodefleet.contracts import Topics
from nodefleet.logging import get_logger

from . import discovery
from .announcer import Announcer
from .credentials import Credentials
from .home_logins import HomeLogins
from .memory import NodeMemory
from .publish import Publish
from .store import Conflict, NotFound, Store

log = get_logger(__name__)


class Removal:
    def __init__(self, *, store: Store, credentials: Credentials, topics: Topics, publish: Publish,
                 memory: NodeMemory, announcer: Announcer, home_logins: HomeLogins) -> None:
        self.store = store
        self.home_logins = home_logins
        self.credentials = credentials
        self.topics = topics
        self.publish = publish
        self.memory = memory
        self.announcer = announcer

    async def remove(self, node: str, *, reason: str = "removed") -> None:
        async with self.memory.lock(node), self.store.pool.acquire() as conn, conn.transaction():
            row = await self.store.device(node, conn, for_update=True)
            if row["status"] == "revoked":
                raise Conflict(f"{node} is already revoked")
            await self.store.revoke(conn, node)
            await self.credentials.remove(node)
            await self.home_logins.left(conn, node, row["home_id"])
            await self.announcer.idle()
        # Discovery first, acknowledged by the broker, then the rest: an entity still alive in Home Assistant
        # would otherwise render the emptied state ("'value_json' is undefined").
        await asyncio.gather(*(self.publish(topic, b"", True) for topic in discovery.removal(self.topics, node)))
        cleared = [self.topics.config(node), self.topics.schedule(node), self.topics.state(node),
                   self.topics.info(node), self.topics.status(node)]
        await asyncio.gather(*(self.publish(topic, b"", True) for topic in cleared))
        self.memory.forget(node)
        log.info("revoked", node=node, reason=reason)

    async def expire(self) -> list[str]:
        """Revoke every pending registration past its time; the nodes revoked."""
        done = []
        for node in await self.store.expired():
            try:
                await self.remove(node, reason="expired")
                done.append(node)
            except (Conflict, NotFound):
                continue
        return done

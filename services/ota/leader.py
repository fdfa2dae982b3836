"""One active ota instance at a time: a PostgreSQL session advisory lock, held on a connection of its own.

Why active and standby, not rollouts split between instances: the nodes of a
release share one stream of frames, and what that stream is (its members,
their credit, what each still lacks) lives in the instance sending it; two
instances would each send the release, and each would answer a request with
only what it holds.  One instance is enough for a fleet's OTA traffic (every
frame is published once for all its nodes); a second one is there to take
over.

The lock is PostgreSQL's: the instance holding it is active, the others
try again every ``poll`` seconds.  A ``kill -9`` (or a crash, or a lost
machine once TCP gives up) ends the holder's session, PostgreSQL lets the
lock go with it, and a standby is active within one poll; it reads the open
rollouts back from the tables as a restarted instance does.  The holder checks
its lock connection every poll: when the check fails (PostgreSQL restarted,
the network cut), it cannot know that no other instance took the lock, so it
steps down at once and competes again.  For at most one poll both may then
send frames and offers, which the nodes take safely (frames are checked and
kept once, offers are the same bytes).
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from nodefleet import pg_errors
from nodefleet.backoff import Backoff
from nodefleet.logging import get_logger

log = get_logger(__name__)

LEADER_LOCK = 0x07A5E1EB  # next to the migration lock (store._LOCK), distinct from it


class Leadership:
    def __init__(self, dsn: str, *, instance: str, poll: float, retry_max: float) -> None:
        self.dsn = dsn
        self.instance = instance
        self.poll = poll
        self.retry_max = retry_max
        self._conn: asyncpg.Connection | None = None

    async def acquire(self) -> None:
        """Wait until this instance holds the lock (connecting, and reconnecting, as long as it takes)."""
        backoff = Backoff(most=self.retry_max, reset_after=float("inf"))
        standby_logged = False
        while True:
            try:
                conn = await asyncpg.connect(self.dsn, timeout=max(self.poll * 5, 5.0))
            except pg_errors.TRANSIENT as exc:
                log.warning("database_unavailable", doing="leadership", error=str(exc) or type(exc).__name__,
                            retry_in=round(backoff.next_pause, 2))
                await backoff.wait()
                continue
            backoff.reset()
            try:
                while True:
                    if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK):
                        self._conn = conn
                        return
                    if not standby_logged:
                        log.info("ota_standby", instance=self.instance,
                                 reason="another ota instance is active; taking over when it is gone")
                        standby_logged = True
                    await asyncio.sleep(self.poll)
            except pg_errors.TRANSIENT as exc:
                log.warning("database_unavailable", doing="leadership", error=str(exc) or type(exc).__name__)
                await _close(conn)

    async def held(self) -> None:
        """Return once the lock may be lost: its connection failed a check (then it is closed)."""
        while True:
            await asyncio.sleep(self.poll)
            if not await self.check():
                return

    async def check(self) -> bool:
        """Whether the lock's connection still answers; if not, it is closed and the lock counts as lost."""
        assert self._conn is not None, "acquire first"
        conn = self._conn
        try:
            await conn.fetchval("SELECT 1", timeout=max(self.poll * 2, 1.0))
        except pg_errors.TRANSIENT as exc:
            log.warning("ota_leadership_lost", instance=self.instance, error=str(exc) or type(exc).__name__,
                        reason="the lock's PostgreSQL session failed; another instance may be active")
            self._conn = None
            await _close(conn)
            return False
        return True

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await _close(conn)  # the session's end lets the lock go


async def _close(conn: asyncpg.Connection) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.close(), 2.0)
    if not conn.is_closed():
        conn.terminate()

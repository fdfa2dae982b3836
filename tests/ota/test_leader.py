"""The ota leadership lock on a real PostgreSQL: one holder, a standby that takes over, a holder that steps down."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from services.ota.leader import LEADER_LOCK, Leadership

pytestmark = pytest.mark.timeout(60)


async def test_one_holder_the_standby_takes_over_and_a_lost_session_steps_down(database):
    first = Leadership(database, instance="a", poll=0.1, retry_max=1)
    second = Leadership(database, instance="b", poll=0.1, retry_max=1)
    await asyncio.wait_for(first.acquire(), 10)
    waiting = asyncio.create_task(second.acquire())
    await asyncio.sleep(0.5)
    assert not waiting.done(), "two instances hold the lock"

    await first.release()  # a clean stop, as a kill -9 ends the session
    await asyncio.wait_for(waiting, 5)

    # The holder's session ended under it (PostgreSQL restarted, the network cut): it notices within a poll.
    watch = asyncio.create_task(second.held())
    admin = await asyncpg.connect(database)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1",
            LEADER_LOCK & 0xFFFFFFFF)
        assert killed == 1
        await asyncio.wait_for(watch, 5)
        await asyncio.wait_for(first.acquire(), 5)  # the lock is free again
    finally:
        await first.release()
        await second.release()
        await admin.close()

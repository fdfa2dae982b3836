"""The scheduler's PostgreSQL away for 20 s across a backup's due second: the backup goes out once it is back."""

from __future__ import annotations

import asyncio
import time

import pytest

from nodefleet.contracts.topics import Command

from .conftest import GRACE, aligned, schedule, schedule_topic

OUTAGE = 20.0


@pytest.fixture
def database(private_postgres) -> str:
    """The scheduler's database on a PostgreSQL of this test's own (the scheduler factory takes this one)."""
    return private_postgres.dsn("nodefleet")


async def test_a_20_s_database_outage_delays_the_backup_and_fires_it_once(make_node, scheduler, watch, topics,
                                                                          private_postgres):
    start, offset, at = aligned(5)
    node = await make_node("n1", offset=offset)
    await node.ctl(f"clock {int(time.time()) - 7200}")  # two hours behind: the node will not run the rule itself
    await scheduler()
    await watch.retain(schedule_topic(topics, "n1"), schedule(1, {"id": "water", "at": at, "duration": 60}))
    await asyncio.sleep(max(0.0, start - time.time() - 1.0))  # the schedule is stored; the run is due in a second
    await asyncio.to_thread(private_postgres.stop, "fast")
    down = time.time()
    try:
        await asyncio.sleep(OUTAGE)
        # Due at start + GRACE, inside the outage: nothing could be claimed, so nothing was sent.
        assert watch.found(topics.set("n1", Command.SWITCH), lambda c: True) == []
        assert (await node.ctl())["relay"] == 0
    finally:
        await asyncio.to_thread(private_postgres.start)
    back = time.time()
    state = await watch.wait(topics.state("n1"), lambda s: s.get("run_id", "").startswith("water-"), timeout=15)
    sent = time.time()
    assert state["relay"] == "ON" and (await node.ctl())["relay"] == 1
    await asyncio.sleep(GRACE + 1)  # a second copy would come within the lease
    assert len(watch.switches("n1", state["run_id"])) == 1
    assert [e["kind"] for e in watch.events("n1")] == ["backup"]
    assert not scheduler.tasks[0].done()  # the same instance, never restarted
    print(f"scheduler: PostgreSQL down {back - down:.1f} s across the due second; backup out {sent - back:.1f} s "
          f"after it came back, once")

"""A backup counts as sent only once the broker acknowledged it; one that was not is sent again after the lease."""

from __future__ import annotations

import asyncio

from nodefleet.wire import NotSent
from services.scheduler.planner import Planner
from services.scheduler.store import Event, Store

from .conftest import aligned, schedule

LEASE = 1.0


async def test_an_unacknowledged_backup_is_sent_again(database):
    store = await Store.open(database, "sched-a")
    sends: list[list[Event]] = []
    published: list[tuple[str, int]] = []

    async def send(won: list[Event]) -> asyncio.Future[None]:
        # Fault injection: the connection closes before the broker acknowledges the first write.
        sends.append(won)
        acked = asyncio.get_running_loop().create_future()
        if len(sends) == 1:
            acked.set_exception(NotSent("the connection closed before the broker acknowledged them"))
        else:
            acked.set_result(None)
        return acked

    async def publish(kind: str, events: list[Event]) -> None:
        published.append((kind, len(events)))

    planner = Planner(store=store, grace=0.5, lease=LEASE, send=send, publish=publish)
    _, offset, at = aligned(1.5)
    view = planner.view("n1")
    view.schedule = schedule(1, {"id": "water", "at": at, "duration": 600})
    view.tz, view.online, view.mode = [(0, offset)], True, "auto"
    planner.replan(view)
    task = asyncio.create_task(planner.run())
    try:
        async with asyncio.timeout(15):
            while len(sends) < 2 or await store.claim_state("n1", sends[0][0][1].run_id) != "sent":
                await asyncio.sleep(0.05)
        assert [e[1].run_id for e in sends[0]] == [e[1].run_id for e in sends[1]]
        assert sends[1][0][2] == "taken over from an instance that did not send it"
        assert published == [("backup", 1)]  # one backup event, for the acknowledged send
        assert planner.counts.backups == 1 and planner.counts.takeovers == 1
        await asyncio.sleep(LEASE + 0.5)
        assert len(sends) == 2  # nothing more once it is acknowledged
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()

"""Invalid schedules are rejected with an error event naming the problem; node and scheduler keep the last valid one."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from nodefleet.contracts.scheduling import ShowAnswer, ShowQuery

from .conftest import schedule, schedule_topic

VALID = schedule(3, {"id": "morning", "at": "06:00", "duration": 1800, "days": ["mon", "tue"]})
INVALID = [
    ("bad time", schedule(4, {"id": "a", "at": "25:00", "duration": 60}), "at must be HH:MM"),
    ("unknown field", schedule(4, {"id": "a", "at": "06:00", "duration": 60, "colour": "red"}), "unknown field colour"),
    ("conflicting overlap", schedule(4, {"id": "on1", "at": "06:00", "duration": 3600},
                                     {"id": "off1", "at": "06:30", "duration": 600, "action": "off"}),
     "rules on1 and off1 overlap with opposite actions"),
    ("interval longer than its period", schedule(4, {"id": "w", "at": "06:00", "duration": 4000, "every": 3600,
                                                     "end": "22:00"}), "duration must not be longer than every"),
]


async def _show(watch, topics, node: str) -> ShowAnswer:
    return ShowAnswer.model_validate(await watch.request("show", ShowQuery(node=node)))


async def test_invalid_schedules_are_rejected_and_the_last_valid_one_is_kept(make_node, scheduler, watch, topics):
    node = await make_node("n1", offset=3600)
    await scheduler()
    await watch.retain(schedule_topic(topics, "n1"), VALID)
    for _ in range(50):
        if (node.read("schedule.json") or {}).get("version") == 3:
            break
        await asyncio.sleep(0.1)
    for why, bad, reason in INVALID:
        await watch.retain(schedule_topic(topics, "n1"), bad)
        event = await watch.wait(topics.errors(), lambda e, reason=reason: e["code"] == "bad_schedule" and reason in e["detail"],
                                 timeout=5)
        assert event["node"] == "n1" and "keeping version 3" in event["detail"], why
        # The node says the same in its own log, and keeps its copy.
        await watch.wait(topics.log("n1"), lambda e, reason=reason: e["code"] == "bad_schedule" and reason in e["msg"], timeout=5)
        shown = await _show(watch, topics, "n1")
        assert shown.schedule == VALID and reason in (shown.rejected or ""), why
    assert node.read("schedule.json") == VALID
    shown = await _show(watch, topics, "n1")
    assert shown.next is not None and shown.next.rule == "morning"


@pytest.mark.parametrize("payload", [b"not json", json.dumps({"v": 1, "version": 0}).encode(), b"[" * 1500,
                                     b'{"rules": ' * 1200 + b"1" + b"}" * 1200],
                         ids=["not json", "version 0", "deep arrays", "deep objects"])
async def test_garbage_is_an_error_event_and_the_service_keeps_running(scheduler, watch, topics, payload):
    await scheduler()
    await watch.retain(schedule_topic(topics, "n2"), payload)
    event = await watch.wait(topics.errors(), lambda e: e["code"] == "bad_schedule", timeout=5)
    assert event["node"] == "n2"
    await watch.retain(schedule_topic(topics, "n2"), VALID)
    for _ in range(50):
        if (await _show(watch, topics, "n2")).schedule == VALID:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the valid schedule after the bad one was not taken")


async def test_a_restarted_scheduler_keeps_the_last_valid_schedule(scheduler, watch, topics):
    await scheduler()
    await watch.retain(schedule_topic(topics, "n3"), VALID)
    for _ in range(50):
        if (await _show(watch, topics, "n3")).schedule == VALID:
            break
        await asyncio.sleep(0.1)
    await watch.retain(schedule_topic(topics, "n3"), INVALID[0][1])
    await watch.wait(topics.errors(), lambda e: e["code"] == "bad_schedule" and e["node"] == "n3", timeout=5)
    # Stopped, and started again with only the invalid schedule retained: the valid one comes from its table.
    first = scheduler.tasks[0]
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    await scheduler("sched-a")
    shown = await _show(watch, topics, "n3")
    assert shown.schedule == VALID and "at must be HH:MM" in (shown.rejected or "")

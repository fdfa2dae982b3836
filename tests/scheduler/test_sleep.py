"""A node asleep by plan is not lost: the scheduler backs up no run for it, until it oversleeps; then it is
flagged and its run goes out (held by the broker for the node). A real simulated node on Mosquitto."""

from __future__ import annotations

import asyncio
import time

from conftest import wait_for

from nodefleet.contracts.queries import TELEMETRY_SERVICE, DevicesQuery
from nodefleet.contracts.topics import Command
from nodefleet.sim import SimNode
from services.scheduler.nodes import NodeView
from services.scheduler.planner import Planner
from services.scheduler.rulebook import Run

from .conftest import FAST_CONFIG, GRACE, aligned, schedule, schedule_topic


async def test_a_node_that_oversleeps_is_flagged_and_backed_up(tmp_path, mosquitto, topics, watch, scheduler,
                                                                telemetry):
    start, offset, at = aligned(10)
    here = (start + offset - 10) % 86400  # the local minute of now: the sleep window is open already
    config = {**FAST_CONFIG, "tz": [{"from": 0, "offset": offset}],
              "sleep": {"at": f"{here // 3600:02d}:{here // 60 % 60:02d}", "duration": 3600, "early": 2}}
    node = SimNode(tmp_path / "n1", name="n1", http=False)
    node.provision(broker=mosquitto.url, topic_prefix=topics.prefix("n1"), keepalive=5, max_backoff=1)
    node.write("config.json", config)
    await watch.retain(topics.config("n1"), config)
    await watch.retain(schedule_topic(topics, "n1"), schedule(1, {"id": "water", "at": at, "duration": 30}))
    await scheduler(wake_grace=1.0)
    try:
        await node.start()
        # It sleeps until two seconds before the rule, having said so.
        state = await watch.wait(topics.state("n1"), lambda s: "sleep_until" in s, timeout=15)
        assert state["sleep_until"] == start - 2
        await watch.wait(topics.status("n1"), lambda s: s == "sleeping")
        shown = await watch.request("show", {"node": "n1"})
        assert shown["sleep_until"] == start - 2 and shown["overslept"] is False
        while not node.asleep:
            await asyncio.sleep(0.05)
        # Telemetry keeps it as asleep, not lost.
        async def asleep() -> list:
            rows = await watch.requester.request(TELEMETRY_SERVICE, "devices", DevicesQuery())
            return [r for r in rows if r["node"] == "n1" and r["sleeping"] and r["online"] is False]

        assert await wait_for(asleep, timeout=5)
        await node.kill()  # its battery went flat: it never wakes

        flagged = await watch.wait(topics.errors(), lambda e: e["code"] == "overslept", timeout=10)
        assert "n1" in flagged["detail"] and time.time() >= start - 2 + 1.0
        backup = await watch.wait(topics.scheduler_events(), lambda e: e["kind"] == "backup", timeout=GRACE + 8)
        assert "overslept" in backup["detail"]
        [command] = watch.switches("n1", backup["run_id"])
        assert command["until"] == start + 30
        assert (await watch.request("show", {"node": "n1"}))["overslept"] is True

        # It comes back late: the broker held the backup for its session, and it runs it.
        await node.start(reset_cause="power_on")
        on = await watch.wait(topics.state("n1"), lambda s: s.get("run_id") == backup["run_id"], timeout=15)
        assert on["relay"] == "ON"
        assert watch.found(topics.set("n1", Command.TIME))  # and it got the backend's time on connecting
    finally:
        await node.stop()
    assert "Traceback" not in node.output(), node.output()


def test_asleep_by_plan_is_skipped_and_overslept_is_claimed() -> None:
    planner = Planner(store=None, grace=2.0, lease=2.0, send=None, publish=None, wake_grace=5.0)  # type: ignore[arg-type]
    run = Run("water", "water-20261123", "on", 1000, 1100)
    view = NodeView("n1", online=False)
    view.note_status(b"sleeping")
    view.sleep_until = 1200.0  # it means to sleep through the run: respected
    assert planner.classify(view, run, 1010, resumed=False) == ("skipped", "node asleep by plan until 1200")
    view.sleep_until = 990.0  # it should have woken before the run
    kind, detail = planner.classify(view, run, 1010, resumed=False)
    assert kind == "claim" and "overslept" in detail
    view.note_status(b"offline")  # lost, not asleep: a miss, resumed if it comes back
    assert planner.classify(view, run, 1010, resumed=False)[0] == "miss"
    view.note_status(b"online")
    assert planner.classify(view, run, 1010, resumed=False)[0] == "claim" and not view.asleep

"""Backup execution with real simulated nodes: silent when the node runs, once when it does not."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from conftest import wait_for

from nodefleet.contracts import COMMAND_TTL
from nodefleet.contracts.scheduling import RunEvent
from nodefleet.contracts.topics import Command
from services.scheduler.app import switch_command
from services.scheduler.rulebook import Run

from .conftest import GRACE, aligned, cli, schedule, schedule_topic


async def _until(ts: float) -> None:
    await asyncio.sleep(max(0.0, ts - time.time()))


async def test_node_runs_its_rule_and_the_scheduler_stays_silent(make_node, scheduler, watch, topics):
    _, offset, at = aligned(6)
    await make_node("n1", offset=offset)
    await scheduler()
    await watch.retain(schedule_topic(topics, "n1"), schedule(1, {"id": "water", "at": at, "duration": 8}))
    run_id = (await watch.wait(topics.state("n1"), lambda s: s.get("run_id", "").startswith("water-"), timeout=12))["run_id"]
    await watch.wait(topics.scheduler_events(), lambda e: e["kind"] == "run" and e["run_id"] == run_id,
                     timeout=GRACE + 4)
    assert watch.switches("n1", run_id) == []
    assert [e["kind"] for e in watch.events("n1")] == ["run"]


async def test_node_with_a_wrong_clock_is_backed_up_once(make_node, telemetry, scheduler, watch, topics, mosquitto):
    start, offset, at = aligned(5)
    node = await make_node("n1", offset=offset)
    await node.ctl(f"clock {int(time.time()) - 7200}")  # two hours behind: its own rule is not due yet
    await scheduler()
    await watch.retain(schedule_topic(topics, "n1"), schedule(1, {"id": "water", "at": at, "duration": 30}))
    state = await watch.wait(topics.state("n1"), lambda s: s.get("run_id", "").startswith("water-"), timeout=12)
    run_id = state["run_id"]
    assert state["relay"] == "ON" and (await node.ctl())["relay"] == 1
    [command] = watch.switches("n1", run_id)
    assert command == {"v": 1, "state": "ON", "until": start + 30, "run_id": run_id, "expires": start + 30}
    [sent_at] = [t for t, topic, _ in watch.messages if topic == topics.set("n1", Command.SWITCH)]
    assert start + GRACE <= sent_at < start + GRACE + 1.0
    await asyncio.sleep(GRACE + 1)
    assert len(watch.switches("n1", run_id)) == 1
    assert [e["kind"] for e in watch.events("n1")] == ["backup"]
    event = RunEvent.model_validate(watch.events("n1")[0])  # the events follow the contract model
    assert event.sent is not None and abs(event.sent - sent_at) < 1  # published once the broker acknowledged
    # `schedule history` shows what the telemetry service stored of the event.

    async def history() -> list[dict]:
        code, out, err = await cli(mosquitto, topics, "history", "n1", "--format", "json")
        assert code == 0, err
        return json.loads(out)

    [row] = await wait_for(history, timeout=10)
    assert row["kind"] == "backup" and row["run_id"] == run_id and row["sent"] == pytest.approx(event.sent, abs=1e-5)


@pytest.mark.parametrize(("command", "body", "mode"), [
    (Command.STOP, {"v": 1}, "stopped"),
    (Command.LOGIC, {"v": 1, "enabled": False}, "logic_disabled"),
])
async def test_manual_stop_and_disabled_logic_are_respected(make_node, scheduler, watch, topics, command, body, mode):
    _, offset, at = aligned(5)
    node = await make_node("n1", offset=offset)
    await node.ctl(f"clock {int(time.time()) - 7200}")
    await scheduler()
    await watch.client.publish(topics.set("n1", command), json.dumps(body), qos=1)
    await watch.wait(topics.state("n1"), lambda s: s["mode"] == mode)
    await watch.retain(schedule_topic(topics, "n1"), schedule(1, {"id": "water", "at": at, "duration": 30}))
    skipped = await watch.wait(topics.scheduler_events(), lambda e: e["kind"] == "skipped", timeout=12)
    assert mode in skipped["detail"]
    assert watch.switches("n1", skipped["run_id"]) == [] and (await node.ctl())["relay"] == 0


async def test_offline_across_the_due_time_then_resumed_once(make_node, scheduler, watch, topics):
    start, offset, at = aligned(6)
    node = await make_node("n1", offset=offset)
    await scheduler()
    await watch.retain(schedule_topic(topics, "n1"), schedule(1, {"id": "water", "at": at, "duration": 25}))
    await asyncio.sleep(1)
    await node.kill()  # power cut before the run
    await watch.wait(topics.status("n1"), lambda s: s == "offline")
    miss = await watch.wait(topics.scheduler_events(), lambda e: e["kind"] == "miss", timeout=12)
    assert "offline" in miss["detail"]
    # Back inside the window, but with a clock two hours behind (and NTP agreeing, so the backend's time is not
    # taken): the node cannot resume the run itself.
    node.env["NF_CLOCK"] = str(int(time.time()) - 7200)
    await node.start()
    state = await watch.wait(topics.state("n1"), lambda s: s.get("run_id") == miss["run_id"], timeout=15)
    assert state["relay"] == "ON" and (await node.ctl())["relay"] == 1
    await asyncio.sleep(GRACE + 1)
    [command] = watch.switches("n1", miss["run_id"])
    assert command["until"] == start + 25
    backup = watch.events("n1", "backup")
    assert len(backup) == 1 and "came back" in backup[0]["detail"]


async def test_offline_node_that_resumes_itself_is_left_alone(make_node, scheduler, watch, topics):
    _, offset, at = aligned(5)
    node = await make_node("n1", offset=offset)
    await scheduler()
    await watch.retain(schedule_topic(topics, "n1"), schedule(1, {"id": "water", "at": at, "duration": 25}))
    await node.kill()
    miss = await watch.wait(topics.scheduler_events(), lambda e: e["kind"] == "miss", timeout=12)
    await node.start()  # with time: it runs the open window on its own
    await watch.wait(topics.scheduler_events(), lambda e: e["kind"] == "run", timeout=GRACE + 8)
    assert watch.switches("n1", miss["run_id"]) == []
    assert (await node.ctl())["relay"] == 1


async def test_a_backup_held_past_the_command_ttl_runs_while_its_window_is_open(make_node, watch, topics):
    node = await make_node("n1", offset=0)
    await node.kill()  # the broker holds what comes now for the node's persistent session
    await watch.wait(topics.status("n1"), lambda s: s == "offline")
    # On the node's clock (NTP in the simulator: this machine's, whatever the date) the backups were due
    # at start + grace, 90 s before the node is back: over COMMAND_TTL.
    now = int(time.time())
    start = now - COMMAND_TTL - 30 - int(GRACE)
    window = Run("water", "water-open", "on", start, now + 600)
    over = Run("rinse", "rinse-over", "on", start - 900, now - 60)
    old = {"v": 1, "state": "ON", "until": window.end, "run_id": "water-old"}  # a backup as it was sent before
    for body in (json.dumps(old).encode(), switch_command(over), switch_command(window)):
        await watch.client.publish(topics.set("n1", Command.SWITCH), body, qos=1)
    await node.start()
    state = await watch.wait(topics.state("n1"), lambda s: s.get("run_id") == window.run_id, timeout=60)
    board = await node.ctl()
    assert state["relay"] == "ON" and state["until"] == window.end and board["relay"] == 1
    assert board["time"] - (start + GRACE) > COMMAND_TTL

    def refused() -> list[dict]:
        return watch.found(topics.log("n1"), lambda e: e["code"] == "command_expired")

    # Without expires the node cannot tell the backup's age; past its window's end it must not run.
    await wait_for(lambda: len(refused()) >= 2, timeout=60)
    [untold, late] = refused()
    assert "without sent or expires" in untold["msg"] and f"expired at {over.end}," in late["msg"]
    assert not [s for s in watch.found(topics.state("n1")) if s.get("run_id") in (old["run_id"], over.run_id)]

"""Retained config and schedule: applied, stored on flash, bad ones rejected with the old ones kept."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from nodefleet import contracts
from nodefleet.contracts.topics import NodeTopic

FIXTURES = Path(contracts.__file__).parent / "fixtures"


async def test_config_is_applied_and_bad_config_is_rejected(make_node, watch):
    node = make_node(config={"telemetry_period": 3600})
    await node.start()
    assert (await watch.wait("state"))["config"] == 1  # the version it booted with

    fixture = json.loads((FIXTURES / "config.json").read_text())
    await watch.retain(NodeTopic.CONFIG, {**fixture, "telemetry_period": 1})
    await watch.wait("telemetry", timeout=5)  # the new period is in force
    assert node.read("config.json") == {**fixture, "telemetry_period": 1}
    await watch.wait("state", lambda s: s.get("config") == fixture["version"])  # and it says so

    # A config the provisioner's model accepts but this board cannot use: rejected, the old version stays.
    mark = watch.mark()
    await watch.retain(NodeTopic.CONFIG, {**fixture, "version": 4, "pins": {"outputs": {"relay": 34}}})
    entry = await watch.wait("log", lambda e: e["code"] == "bad_config", since=mark)
    assert "version 4 rejected" in entry["msg"] and "pins.outputs.relay=34" in entry["msg"]
    assert not watch.found("state", lambda s: s.get("config") == 4, since=mark)

    mark = watch.mark()
    await watch.retain(NodeTopic.CONFIG, {**fixture, "version": 4, "telemetry_period": 0})
    entry = await watch.wait("log", lambda e: e["code"] == "bad_config", since=mark)
    assert "telemetry_period" in entry["msg"]
    await watch.retain(NodeTopic.CONFIG, {"v": 1})
    await watch.wait("log", lambda e: e["code"] == "bad_config" and "version" in e["msg"], since=mark)
    await watch.retain(NodeTopic.CONFIG, b"{not json")
    await watch.wait("log", lambda e: e["code"] == "bad_config" and "JSON" in e["msg"], since=mark)
    assert node.read("config.json")["version"] == fixture["version"]

    mark = watch.mark()
    await watch.retain(NodeTopic.SCHEDULE, {"v": 1, "version": 2, "rules": [{"id": "x", "at": "25:00", "duration": 5}]})
    entry = await watch.wait("log", lambda e: e["code"] == "bad_schedule", since=mark)
    assert "HH:MM" in entry["msg"] and node.read("schedule.json") is None
    fixture = json.loads((FIXTURES / "schedule.json").read_text())
    mark = watch.mark()
    await watch.retain(NodeTopic.SCHEDULE, fixture)
    await watch.command("logic", {"enabled": True})
    # On a loaded machine the file was seen to appear just after the ack: poll briefly.
    for _ in range(100):
        if node.read("schedule.json") == fixture:
            break
        await asyncio.sleep(0.05)
    assert node.read("schedule.json") == fixture, watch.found("log", lambda e: True, since=mark)


async def test_the_state_confirms_the_schedule_in_force(node, watch):
    from nodefleet.contracts import State

    assert State.model_validate(await watch.wait("state")).schedule is None  # none yet
    fixture = json.loads((FIXTURES / "schedule.json").read_text())
    mark = watch.mark()
    await watch.retain(NodeTopic.SCHEDULE, fixture)
    state = await watch.wait("state", lambda s: s.get("schedule") == fixture["version"], since=mark)
    assert State.model_validate(state).schedule == fixture["version"]

    # A rejected schedule is logged; the state keeps naming the version still in force.
    mark = watch.mark()
    await watch.retain(NodeTopic.SCHEDULE, {**fixture, "version": fixture["version"] + 1, "rules": [
        {"id": "x", "at": "25:00", "duration": 5}]})
    await watch.wait("log", lambda e: e["code"] == "bad_schedule", since=mark)
    await watch.command("logic", {"enabled": True})
    assert all(s["schedule"] == fixture["version"] for s in watch.found("state", since=mark))

    # After a restart the stored schedule is still reported; an empty retained message removes it.
    mark = watch.mark()
    await node.stop()
    await node.start()
    assert (await watch.wait("state", since=mark, timeout=15))["schedule"] == fixture["version"]
    mark = watch.mark()
    await watch.retain(NodeTopic.SCHEDULE, b"")
    await watch.wait("state", lambda s: s["schedule"] is None, since=mark)
    assert node.read("schedule.json") is None

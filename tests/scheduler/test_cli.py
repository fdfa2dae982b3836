"""``nodefleet schedule set|show|history`` against a running scheduler and telemetry service."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import click
import pytest
from conftest import wait_for

from nodefleet.cli.schedule import parse_days

from .conftest import GRACE, aligned, cli, node_config


def test_days():
    assert parse_days("mon-fri") == ["mon", "tue", "wed", "thu", "fri"]
    assert parse_days("sat,sun") == ["sat", "sun"]
    assert parse_days("fri-mon") == ["mon", "fri", "sat", "sun"]
    assert parse_days("daily") == ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    with pytest.raises(click.BadParameter):
        parse_days("weekdays")


WEEK = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def days_away_from_today() -> tuple[str, str]:
    """Two weekdays on which no window of the rules below is open now, whatever the hour and the node's UTC offset."""
    today = datetime.now(UTC).weekday()
    return WEEK[(today + 3) % 7], WEEK[(today + 4) % 7]


async def test_set_show_history(telemetry, scheduler, watch, mosquitto, topics):
    # No run may fall due during the test, or the history below would not be empty.
    first, second = days_away_from_today()
    await scheduler()
    code, _, err = await cli(mosquitto, topics, "set", "kitchen", "--at", "06:00", "--for", "30m", "--days", first)
    assert code == 0, err
    code, _, err = await cli(mosquitto, topics, "set", "kitchen", "--at", "06:00", "--for", "20m", "--every", "4h",
                             "--end", "22:00", "--days", second, "--id", "water")
    assert code == 0, err
    retained = await watch.wait(topics.schedule("kitchen"), lambda s: s["version"] == 2)
    assert retained["rules"] == [
        {"id": "on-0600", "at": "06:00", "duration": 1800, "days": [first], "action": "on", "enabled": True},
        {"id": "water", "at": "06:00", "duration": 1200, "days": [second], "action": "on", "enabled": True,
         "every": 14400, "end": "22:00"},
    ]
    # A time that is not one is refused in words (the node's own), not as a regular expression.
    code, _, err = await cli(mosquitto, topics, "set", "kitchen", "--at", "25:99", "--for", "5m")
    assert code == 1 and "rule on-2599: at must be HH:MM" in err and "pattern" not in err, err
    # A rule that conflicts with one held is refused before anything is published.
    code, _, err = await cli(mosquitto, topics, "set", "kitchen", "--at", "06:10", "--for", "5m", "--action", "off")
    assert code == 1 and "overlap with opposite actions" in err
    code, out, err = await cli(mosquitto, topics, "show", "kitchen", "--format", "json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["retained"] == retained and shown["scheduler"]["schedule"] == retained
    assert shown["scheduler"]["next"]["rule"] in ("on-0600", "water")
    code, out, err = await cli(mosquitto, topics, "show", "kitchen")
    assert code == 0 and "water" in out and "next:" in out
    code, out, err = await cli(mosquitto, topics, "history", "kitchen")
    assert code == 0 and "no run events" in err, (out, err)


async def test_history_shows_what_telemetry_stored(telemetry, scheduler, watch, mosquitto, topics):
    """A rule of a node that never came online: the scheduler's miss reaches the history through telemetry."""
    start, offset, at = aligned(8)  # the CLI's `set` takes a couple of seconds before the schedule is out
    await watch.retain(topics.config("porch"), node_config(offset))
    await scheduler()
    code, _, err = await cli(mosquitto, topics, "set", "porch", "--at", at, "--for", "30s", "--id", "light")
    assert code == 0, err
    assert time.time() < start, "the schedule must be out before the run is due"
    miss = await watch.wait(topics.scheduler_events(), lambda e: e["kind"] == "miss", timeout=GRACE + 12)

    async def history() -> list[dict]:
        code, out, err = await cli(mosquitto, topics, "history", "porch", "--format", "json")
        assert code == 0, err
        return json.loads(out)

    [row] = await wait_for(history, timeout=10)
    assert {k: row[k] for k in ("node", "run_id", "rule", "kind", "action", "instance", "sent")} == {
        "node": "porch", "run_id": miss["run_id"], "rule": "light", "kind": "miss", "action": "on",
        "instance": "sched-a", "sent": None}
    assert (row["start"], row["end"]) == (start, start + 30) and "offline" in row["detail"]
    assert row["ts"] == pytest.approx(miss["ts"], abs=1e-5) and row["received"] >= row["ts"] - 1
    code, out, err = await cli(mosquitto, topics, "history", "porch")
    assert code == 0, err
    assert "porch: 1 run event(s)" in out and miss["run_id"] in out and "miss" in out and "sched-a" in out


async def test_history_without_the_telemetry_service_says_so(watch, mosquitto, topics):
    code, _, err = await cli(mosquitto, topics, "history", "porch", "--timeout", "0.5")
    assert code == 1 and "telemetry service keeps the run history" in err


async def test_show_marks_a_rejected_schedule_and_shows_what_runs(make_node, scheduler, watch, mosquitto, topics):
    node = await make_node("n1", offset=0)
    await scheduler()
    good = {"v": 1, "version": 3, "rules": [{"id": "morning", "at": "06:00", "duration": 1800, "days": ["mon"]}]}
    await watch.retain(topics.schedule("n1"), good)
    await wait_for(lambda: (node.read("schedule.json") or {}).get("version") == 3, timeout=10)
    bad = {"v": 1, "version": 4, "rules": [{"id": "late", "at": "06:00", "duration": 60, "colour": "red"}]}
    await watch.retain(topics.schedule("n1"), bad)
    await watch.wait(topics.log("n1"), lambda e: e["code"] == "bad_schedule", timeout=5)
    await watch.wait(topics.errors(), lambda e: e["code"] == "bad_schedule" and e["node"] == "n1", timeout=5)
    code, out, err = await cli(mosquitto, topics, "show", "n1")
    assert code == 1, out + err
    # The rules in force (version 3), not the rejected ones shown as if they ran; the rejection with its reason.
    assert "schedule version 3 in force" in out and "morning" in out and "late" not in out.split("REJECTED")[0]
    assert "REJECTED: retained version 4" in out and "unknown field colour" in out
    assert "version 4 was rejected" in err and "version 3 stays in force" in err
    code, out, err = await cli(mosquitto, topics, "show", "n1", "--format", "json")
    shown = json.loads(out)
    assert code == 1 and shown["running"] == good and shown["retained"] == bad
    assert shown["rejected"]["version"] == 4 and "unknown field colour" in shown["rejected"]["reason"]
    # Fixed: exit 0 again.
    await watch.retain(topics.schedule("n1"), {**good, "version": 5})
    await wait_for(lambda: (node.read("schedule.json") or {}).get("version") == 5, timeout=10)
    code, out, err = await cli(mosquitto, topics, "show", "n1")
    assert code == 0 and "schedule version 5 in force" in out and "REJECTED" not in out, out + err


async def test_show_without_the_scheduler_takes_the_nodes_word(telemetry, watch, mosquitto, topics):
    """No scheduler: the node's reported version (State.schedule) and its bad_schedule log entry say it."""
    await watch.retain(topics.schedule("n2"), {"v": 1, "version": 4, "rules": [{"id": "x", "at": "25:00",
                                                                                "duration": 60}]})
    await watch.retain(topics.state("n2"), {"v": 1, "seq": 7, "relay": "OFF", "mode": "auto", "schedule": 3})
    await watch.client.publish(topics.log("n2"), json.dumps({"v": 1, "seq": 1, "level": "warning",
                                                            "code": "bad_schedule", "msg": "rule x: at must be HH:MM"}),
                               qos=1)

    async def shown() -> dict:
        code, out, _ = await cli(mosquitto, topics, "show", "n2", "--format", "json", "--timeout", "0.5")
        data = json.loads(out)
        return data if code == 1 and "HH:MM" in (data["rejected"] or {}).get("reason", "") else {}

    data = await wait_for(shown, timeout=15, interval=0.2)
    assert data["node_applied"] == 3 and data["running"] is None and data["rejected"]["by"] == "node"
    code, out, err = await cli(mosquitto, topics, "show", "n2", "--timeout", "0.5")
    assert code == 1 and "the node keeps version 3" in out and "REJECTED: retained version 4 (by the node)" in out
    assert "version 3 stays in force" in err

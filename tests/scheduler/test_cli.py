"""``nodefleet schedule set|show|history`` against a running scheduler."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import click
import pytest

from nodefleet.cli.schedule import parse_days


async def cli(mosquitto, topics, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "NODEFLEET_MQTT_URL": mosquitto.url, "NODEFLEET_TOPIC_ROOT": topics.root,
           "NODEFLEET_FLEET_ROOT": topics.fleet}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "nodefleet", "schedule", *args, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode or 0, out.decode(), err.decode()


def test_days():
    assert parse_days("mon-fri") == ["mon", "tue", "wed", "thu", "fri"]
    assert parse_days("sat,sun") == ["sat", "sun"]
    assert parse_days("fri-mon") == ["mon", "fri", "sat", "sun"]
    assert parse_days("daily") == ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    with pytest.raises(click.BadParameter):
        parse_days("weekdays")


async def test_set_show_history(scheduler, watch, mosquitto, topics):
    await scheduler()
    code, _, err = await cli(mosquitto, topics, "set", "kitchen", "--at", "06:00", "--for", "30m", "--days", "mon-fri")
    assert code == 0, err
    code, _, err = await cli(mosquitto, topics, "set", "kitchen", "--at", "06:00", "--for", "20m", "--every", "4h",
                             "--end", "22:00", "--days", "sat,sun", "--id", "water")
    assert code == 0, err
    retained = await watch.wait(topics.schedule("kitchen"), lambda s: s["version"] == 2)
    assert retained["rules"] == [
        {"id": "on-0600", "at": "06:00", "duration": 1800, "days": ["mon", "tue", "wed", "thu", "fri"],
         "action": "on", "enabled": True},
        {"id": "water", "at": "06:00", "duration": 1200, "days": ["sat", "sun"], "action": "on", "enabled": True,
         "every": 14400, "end": "22:00"},
    ]
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
    assert code == 0 and "no run events" in err

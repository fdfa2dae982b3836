"""``devices`` tells a node asleep by plan from a lost one, with the wake time its last state announced."""

from __future__ import annotations

import json
import time
import uuid

from conftest import wait_for

from nodefleet.contracts import Topics
from nodefleet.contracts.queries import DeviceRow
from nodefleet.fleet import replies_to
from nodefleet.wire import BrokerAddress, Client


async def _devices(mosquitto, topics: Topics) -> dict[str, DeviceRow]:
    requester_id = f"cli-{uuid.uuid4().hex[:8]}"
    async with (Client(BrokerAddress.parse(mosquitto.url), client_id=requester_id) as mqtt,
                replies_to(mqtt, topics, client_id=requester_id) as requester):
        rows = await requester.request("telemetry", "devices", {}, timeout=5)
    return {row["node"]: DeviceRow.model_validate(row) for row in rows}


async def test_a_sleeping_node_has_its_wake_time_and_an_awake_one_none(service, publisher, mosquitto, topics: Topics):
    wake = time.time() + 600  # the clock this test runs on
    await publisher.publish(topics.state("z1"), json.dumps({"v": 1, "seq": 1, "relay": "OFF", "mode": "auto",
                                                             "sleep_until": wake}), qos=1)
    await publisher.publish(topics.status("z1"), "sleeping", qos=1)
    # z2 announced a sleep once, then woke: its old sleep_until is not a wake time any more.
    await publisher.publish(topics.state("z2"), json.dumps({"v": 1, "seq": 1, "relay": "ON", "mode": "auto",
                                                             "sleep_until": wake}), qos=1)
    await publisher.publish(topics.status("z2"), "online", qos=1)
    await publisher.publish(topics.status("z3"), "offline", qos=1)
    await wait_for(lambda: service.db.fetchval(
        "SELECT count(*) = 2 FROM node_state WHERE node IN ('z1', 'z2')"), timeout=10)
    await wait_for(lambda: service.db.fetchval("SELECT count(*) = 3 FROM nodes WHERE online IS NOT NULL"), timeout=10)
    devices = await _devices(mosquitto, topics)
    assert (devices["z1"].online, devices["z1"].sleeping) == (False, True)
    assert abs(devices["z1"].sleep_until - wake) < 0.01
    assert (devices["z2"].online, devices["z2"].sleeping, devices["z2"].sleep_until) == (True, False, None)
    assert (devices["z3"].online, devices["z3"].sleeping, devices["z3"].sleep_until) == (False, False, None)

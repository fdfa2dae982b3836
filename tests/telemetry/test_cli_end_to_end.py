"""The operator commands against the real telemetry service (not a stand-in)."""

from __future__ import annotations

import asyncio
import json
import time

from click.testing import CliRunner

from conftest import wait_for
from nodefleet.cli import main
from nodefleet.contracts import Topics


async def _cli(*args: str) -> object:
    result = await asyncio.to_thread(CliRunner().invoke, main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def test_devices_telemetry_query_and_logs_commands(service, publisher, mosquitto, topics: Topics):
    now = time.time()
    await publisher.publish(topics.status("e1"), "online", qos=1)
    await publisher.publish(topics.state("e1"), json.dumps({"v": 1, "seq": 3, "relay": "OFF", "mode": "auto"}), qos=1)
    for seq in range(3):
        body = {"v": 1, "seq": seq, "ts": now - 120 + seq, "readings": {"temperature": 20.0 + seq}}
        await publisher.publish(topics.telemetry("e1"), json.dumps(body), qos=1)
    await publisher.publish(topics.log("e1"), json.dumps({"v": 1, "seq": 1, "code": "boot", "msg": "hello"}), qos=1)
    await wait_for(lambda: service.db.fetchval("SELECT count(*) FROM device_logs"), timeout=10)

    where = ["--broker", mosquitto.url, "--topic-root", topics.root, "--fleet-root", topics.fleet, "--format", "json"]
    devices = await _cli("devices", *where)
    assert [(d["node"], d["relay"], d["mode"]) for d in devices] == [("e1", "OFF", "auto")]
    rows = await _cli("telemetry", "query", "e1", "--since", "1h", *where)
    assert [r["seq"] for r in rows] == [0, 1, 2]
    logs = await _cli("logs", "e1", *where)
    assert [g["code"] for g in logs] == ["boot"]

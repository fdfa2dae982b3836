"""The operator commands as subprocesses against a real Mosquitto.

The fleet requests are answered by an in-test responder built on
``nodefleet.fleet.answer`` (a real MQTT round trip), so these tests pin the
CLI's side of the contract; ``test_cli_end_to_end`` goes through the real
telemetry service.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from nodefleet.contracts import Topics
from nodefleet.contracts.queries import DeviceRow, LogRow, TelemetryRow
from nodefleet.embedded.mosquitto import free_port
from nodefleet.wire import BrokerAddress, Client

from .helpers import as_dicts, cli_env, nodefleet, responder

pytestmark = pytest.mark.timeout(60)

NOW = time.time()


def devices(now: float) -> list[DeviceRow]:
    return [
        DeviceRow(node="kitchen", online=True, availability_changed=now - 3600, last_seen=now - 12, relay="ON",
                  mode="auto", state_seq=7, fw="1.4.2", chip_id="a1b2c3"),
        DeviceRow(node="attic", online=False, availability_changed=now - 7200, last_seen=now - 7300),
        DeviceRow(node="porch", online=False, sleeping=True, sleep_until=now + 1830, availability_changed=now - 60,
                  last_seen=now - 61),
        DeviceRow(node="shed", online=False, sleeping=True, availability_changed=now - 60, last_seen=now - 61),
    ]


DEVICES = devices(NOW)
ROWS = [
    TelemetryRow(node="kitchen", time=NOW - 120, received=NOW - 119.5, seq=41, readings={"temperature": 21.5, "humidity": 40}),
    TelemetryRow(node="kitchen", time=NOW - 60, received=NOW - 59.5, seq=42, readings={"temperature": 21.75, "rssi": -61}),
]
LOGS = [
    LogRow(node="kitchen", received=NOW - 10, time=NOW - 300, seq=3, level="error", code="wifi_lost",
           msg="access point gone", reset_cause="brownout"),
    LogRow(node="kitchen", received=NOW - 20, time=None, seq=2, level="critical", code="crash", msg="boom",
           trace="Traceback: line 1"),
]


class Recorder:
    """Handlers that return canned rows and remember what each request asked."""

    def __init__(self) -> None:
        self.requests: dict[str, dict[str, Any]] = {}

    def handlers(self, devices: list[Any] = DEVICES, rows: list[Any] = ROWS, logs: list[Any] = LOGS) -> dict:
        async def on_devices(data: dict[str, Any]) -> list[dict[str, Any]]:
            self.requests["devices"] = data
            return as_dicts(devices)

        async def on_telemetry(data: dict[str, Any]) -> list[dict[str, Any]]:
            self.requests["telemetry"] = data
            return as_dicts(rows)

        async def on_logs(data: dict[str, Any]) -> list[dict[str, Any]]:
            self.requests["logs"] = data
            return as_dicts(logs)

        return {"devices": on_devices, "telemetry": on_telemetry, "logs": on_logs}


def args(mosquitto, *rest: str) -> list[str]:
    return [*rest, "--broker", mosquitto.url]


async def test_devices_in_every_format(mosquitto, topics: Topics) -> None:
    env = cli_env(topics)
    made = time.time()  # not at import: other tests may run for minutes before this one
    rows = devices(made)
    async with responder(mosquitto.url, topics, Recorder().handlers(devices=rows)):
        table = await nodefleet(*args(mosquitto, "devices"), env=env)
        as_json = await nodefleet(*args(mosquitto, "devices", "--format", "json"), env=env)
        as_csv = await nodefleet(*args(mosquitto, "devices", "--format", "csv"), env=env)
    assert table.code == 0, table.stderr
    lines = table.stdout.splitlines()
    kitchen = next(line for line in lines if "kitchen" in line)
    attic = next(line for line in lines if "attic" in line)
    porch = next(line for line in lines if "porch" in line)
    shed = next(line for line in lines if "shed" in line)
    # The table shows the rows' age when it was printed.
    seen_ago = int(re.search(r"(\d+) s ago", kitchen).group(1))
    assert 12 <= seen_ago <= 12 + time.time() - made + 1
    assert "online" in kitchen and "ON" in kitchen and "auto" in kitchen and "1.4.2" in kitchen
    assert "offline" in attic and "2 h ago" in attic
    # Asleep by plan is not offline; the wake it announced shows where it said one.
    assert "sleeping" in porch and "offline" not in porch and "30 min from now" in porch
    assert "sleeping" in shed and "from now" not in shed
    assert lines.index(attic) < lines.index(kitchen) < lines.index(porch)  # sorted by name
    words = {"attic": "offline", "kitchen": "online", "porch": "sleeping", "shed": "sleeping"}
    assert json.loads(as_json.stdout) == sorted(({**row, "availability": words[row["node"]]} for row in as_dicts(rows)),
                                                key=lambda row: row["node"])
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [row["node"] for row in parsed] == ["attic", "kitchen", "porch", "shed"]
    assert [row["availability"] for row in parsed] == ["offline", "online", "sleeping", "sleeping"]
    assert parsed[1]["last_seen"].endswith("Z") and parsed[2]["sleep_until"].endswith("Z") and not parsed[3]["sleep_until"]


async def test_telemetry_query_sends_the_window_and_prints_rows(mosquitto, topics: Topics) -> None:
    env = cli_env(topics)
    recorder = Recorder()
    async with responder(mosquitto.url, topics, recorder.handlers()):
        started = time.time()
        table = await nodefleet(*args(mosquitto, "telemetry", "query", "kitchen", "--since", "1h"), env=env)
        asked = recorder.requests["telemetry"]
        as_csv = await nodefleet(*args(mosquitto, "telemetry", "query", "kitchen", "--since", "2026-01-01T00:00:00Z",
                                       "--until", "2026-01-02T00:00:00Z", "--limit", "5", "--format", "csv"), env=env)
        windowed = recorder.requests["telemetry"]
        as_json = await nodefleet(*args(mosquitto, "telemetry", "query", "kitchen", "--format", "json"), env=env)
    assert table.code == 0, table.stderr
    assert asked["node"] == "kitchen" and asked.get("until") is None
    assert abs(asked["since"] - (started - 3600)) < 30
    assert "21.75" in table.stdout and "-61" in table.stdout and "humidity" in table.stdout
    assert windowed == {"node": "kitchen", "since": 1767225600.0, "until": 1767312000.0, "limit": 5}
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [row["seq"] for row in parsed] == ["41", "42"]
    assert parsed[0]["temperature"] == "21.5" and parsed[0]["rssi"] == "" and parsed[1]["rssi"] == "-61"
    assert json.loads(as_json.stdout) == as_dicts(ROWS)


async def test_logs_newest_first_with_traces(mosquitto, topics: Topics) -> None:
    env = cli_env(topics)
    recorder = Recorder()
    async with responder(mosquitto.url, topics, recorder.handlers()):
        table = await nodefleet(*args(mosquitto, "logs", "kitchen", "--limit", "2", "--traces"), env=env)
    assert table.code == 0, table.stderr
    assert recorder.requests["logs"] == {"node": "kitchen", "limit": 2}
    assert table.stdout.index("wifi_lost") < table.stdout.index("crash")
    assert "brownout" in table.stdout and "access point gone" in table.stdout
    assert "Traceback: line 1" in table.stdout


async def test_empty_results_say_so(mosquitto, topics: Topics) -> None:
    env = cli_env(topics)
    async with responder(mosquitto.url, topics, Recorder().handlers(devices=[], rows=[], logs=[])):
        query = await nodefleet(*args(mosquitto, "telemetry", "query", "nobody"), env=env)
        logs = await nodefleet(*args(mosquitto, "logs", "nobody", "--format", "json"), env=env)
        devices = await nodefleet(*args(mosquitto, "devices"), env=env)
    assert query.code == 0 and "no telemetry from node 'nobody'" in query.stderr and "nodefleet devices" in query.stderr
    assert query.stdout == ""
    assert logs.code == 0 and json.loads(logs.stdout) == [] and "no logs from node 'nobody'" in logs.stderr
    assert devices.code == 0 and "no nodes known" in devices.stderr


async def test_service_errors_and_silence_are_explained(mosquitto, topics: Topics) -> None:
    env = cli_env(topics)

    async def refuse(data: dict[str, Any]) -> None:
        raise ValueError("since must be before until")

    async with responder(mosquitto.url, topics, {"telemetry": refuse}):
        refused = await nodefleet(*args(mosquitto, "telemetry", "query", "kitchen"), env=env)
    silent = await nodefleet(*args(mosquitto, "devices", "--timeout", "0.5"), env=env)
    assert refused.code == 1 and "answered with an error: since must be before until" in refused.stderr
    assert silent.code == 1
    assert "no answer from the telemetry service" in silent.stderr and "nodefleet up" in silent.stderr


async def test_usage_errors_say_what_to_do(mosquitto, topics: Topics) -> None:
    env = cli_env(topics)
    unreachable = await nodefleet("devices", "--broker", f"mqtt://127.0.0.1:{free_port()}", env=env)
    from_env = await nodefleet("logs", "kitchen", env=cli_env(topics, NODEFLEET_MQTT_URL=f"mqtt://127.0.0.1:{free_port()}"))
    bad_since = await nodefleet(*args(mosquitto, "telemetry", "query", "kitchen", "--since", "yesterday"), env=env)
    backwards = await nodefleet(*args(mosquitto, "telemetry", "query", "kitchen", "--since", "1h", "--until", "2h"), env=env)
    bad_node = await nodefleet(*args(mosquitto, "logs", "Kitchen/1"), env=env)
    for result in (unreachable, from_env):
        assert result.code == 1
        assert "cannot reach the broker" in result.stderr and "is `nodefleet up` running? use --broker" in result.stderr
    assert bad_since.code == 2 and "30s, 15m, 1h, 7d" in bad_since.stderr
    assert backwards.code == 2 and "--until must be later than --since" in backwards.stderr
    assert bad_node.code == 2 and "invalid node name" in bad_node.stderr


async def test_device_remove_without_a_terminal_says_to_pass_yes(mosquitto, topics: Topics) -> None:
    asked = await nodefleet(*args(mosquitto, "device", "remove", "kitchen"), env=cli_env(topics))  # stdin: /dev/null
    assert asked.code == 1 and "pass --yes" in asked.stderr and "kitchen" in asked.stderr, asked


async def test_help_texts_have_examples() -> None:
    for command in (["up"], ["devices"], ["telemetry", "tail"], ["telemetry", "query"], ["logs"]):
        result = await nodefleet(*command, "--help", env=cli_env())
        assert result.code == 0 and "Examples:" in result.stdout, command


async def _start_tail(*rest: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodefleet", "telemetry", "tail", *rest, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    line = await asyncio.wait_for(process.stderr.readline(), 15)
    assert b"listening on" in line, line
    return process


async def test_tail_prints_messages_as_they_come(mosquitto, topics: Topics) -> None:
    env = cli_env(topics)
    one_node = await _start_tail("kitchen", "--count", "2", "--broker", mosquitto.url, env=env)
    every_node = await _start_tail("--count", "3", "--format", "json", "--broker", mosquitto.url, env=env)
    async with Client(BrokerAddress.parse(mosquitto.url), client_id="tail-test-publisher") as mqtt:
        await mqtt.publish(topics.telemetry("attic"), b'{"v":1,"seq":1,"readings":{"temperature":5.5}}', qos=1)
        await mqtt.publish(topics.telemetry("kitchen"), b"not json", qos=1)
        await mqtt.publish(topics.telemetry("kitchen"), b'{"v":1,"seq":2,"ts":1795000000,"readings":{"humidity":41}}', qos=1)
        await mqtt.publish(topics.telemetry("kitchen"), b'{"v":1,"seq":3,"readings":{"humidity":42}}', qos=1)
    one_out, one_err = await asyncio.wait_for(one_node.communicate(), 15)
    every_out, _ = await asyncio.wait_for(every_node.communicate(), 15)
    assert one_node.returncode == 0 and every_node.returncode == 0
    lines = one_out.decode().splitlines()
    assert len(lines) == 2 and all("kitchen" in line for line in lines)
    assert "seq=2" in lines[0] and "humidity=41" in lines[0] and "seq=3" in lines[1]
    assert "skipped a malformed message" in one_err.decode()
    parsed = [json.loads(line) for line in every_out.decode().splitlines()]
    assert [(row["node"], row["seq"]) for row in parsed] == [("attic", 1), ("kitchen", 2), ("kitchen", 3)]
    assert parsed[0]["readings"] == {"temperature": 5.5} and parsed[1]["time"] == 1795000000


async def test_tail_stops_cleanly_on_ctrl_c(mosquitto, topics: Topics) -> None:
    tail = await _start_tail("--broker", mosquitto.url, env=cli_env(topics))
    tail.send_signal(signal.SIGINT)
    _, stderr = await asyncio.wait_for(tail.communicate(), 15)
    assert tail.returncode == 0, stderr
    assert b"Traceback" not in stderr

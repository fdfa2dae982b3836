"""Planned deep sleep on the real interpreter, on Mosquitto and on the embedded amqtt: the sleep window of the
config (woken at its end, and early for a rule that falls due inside), and set/sleep. The simulated board sleeps
by exiting; the launcher starts it again after the sleep with reset cause ``deepsleep`` and its RTC kept."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from nodefleet.contracts import SLEEPING, Info, State
from nodefleet.contracts.topics import NodeTopic
from nodefleet.wire import Inbound
from services.provisioner.discovery import homie_state
from services.telemetry.decode import Decoder

from .conftest import SLOW, online, until

MONDAY = int(datetime(2026, 11, 23, tzinfo=UTC).timestamp())
"""Midnight UTC of a fixed Monday: the node's clock is put near it (no dependence on today's date)."""


async def _asleep(node, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not node.asleep:
        assert time.monotonic() < deadline, f"the node never slept:\n{node.output()}"
        await asyncio.sleep(0.05)


async def test_sleep_window_is_announced_and_ends_on_time(broker, topics, make_node):
    node = make_node("sleepy-1", broker=broker, config={"sleep": {"at": "00:00", "duration": 6}})
    async with online(node, broker, topics) as watch:
        mark = watch.mark()
        await node.ctl(f"clock {MONDAY - 2}")  # 23:59:58 on Sunday: the window opens in two seconds
        status = await watch.wait("status", lambda s: s != "online", since=mark, timeout=15)
        assert status == "sleeping"  # not the will's offline: the node said goodbye
        [last] = [State.model_validate(s) for s in watch.found("state", since=mark)][-1:]
        assert last.sleep_until == MONDAY + 6 and last.relay == "OFF"
        await _asleep(node)
        slept_at = time.monotonic()
        # The retained status a newcomer sees is still "sleeping", not the will.
        await asyncio.sleep(1)
        assert watch.found("status", since=mark) == ["sleeping"]

        info = Info.model_validate(await watch.wait("info", lambda i: i.get("boot_reason") == "deepsleep",
                                                    since=mark, timeout=SLOW))
        assert info.wake == "window" and info.clock in ("ntp", "rtc")
        assert time.monotonic() - slept_at >= 3  # it slept until the window's end, not a restart
        await watch.wait("status", lambda s: s == "online", since=mark, timeout=SLOW)
        board = await node.ctl()
        assert board["time_valid"] and MONDAY + 6 <= board["time"] < MONDAY + 30  # the RTC ran through
        assert node.sleeps == 1
        awake = watch.found("state", since=watch.mark() - 1)
        assert all("sleep_until" not in s for s in awake)


async def test_node_wakes_early_for_a_rule_inside_its_window(broker, topics, make_node):
    node = make_node("sleepy-2", broker=broker, config={"sleep": {"at": "00:00", "duration": 3600, "early": 3}})
    node.write("schedule.json", {"v": 1, "version": 1, "rules": [{"id": "pump", "at": "00:01", "duration": 4}]})
    async with online(node, broker, topics) as watch:
        mark = watch.mark()
        await node.ctl(f"clock {MONDAY + 52}")  # 00:00:52, inside the window; the rule is due at 00:01
        state = await watch.wait("state", lambda s: "sleep_until" in s, since=mark, timeout=15)
        assert state["sleep_until"] == MONDAY + 60 - 3
        await _asleep(node)
        await watch.wait("info", lambda i: i.get("wake") == "rule", since=mark, timeout=SLOW)
        ran = await watch.wait("state", lambda s: s.get("run_id") == "pump-20261123", since=mark, timeout=SLOW)
        assert ran["relay"] == "ON" and MONDAY + 60 <= ran["ts"] <= MONDAY + 62  # on its minute
        # After the run, still inside the window: asleep again until its end.
        again = await watch.wait("state", lambda s: s.get("sleep_until") == MONDAY + 3600, since=mark, timeout=SLOW)
        assert again["relay"] == "OFF"
        await _asleep(node)
        assert node.sleeps == 2


async def test_set_sleep_only_with_the_relay_off(broker, topics, make_node):
    node = make_node("sleepy-3", broker=broker)
    async with online(node, broker, topics) as watch:
        assert (await watch.command("switch", {"state": "ON"}))["status"] == "ok"
        refused = await watch.command("sleep", {"for": 3})
        assert refused["status"] == "error" and "relay is on" in refused["error"]
        assert (await watch.command("sleep", {"for": "long"}))["status"] == "error"
        assert (await watch.command("switch", {"state": "OFF"}))["status"] == "ok"
        mark = watch.mark()
        assert (await watch.command("sleep", {"for": 3}))["status"] == "ok"
        await watch.wait("status", lambda s: s == "sleeping", since=mark, timeout=15)
        await _asleep(node)
        info = await watch.wait("info", lambda i: i.get("boot_reason") == "deepsleep", since=mark, timeout=SLOW)
        assert info["wake"] == "command"
        await watch.wait("status", lambda s: s == "online", since=mark, timeout=SLOW)
        await until(node, lambda b: b["relay"] == 0)
        await asyncio.sleep(4)  # a command's sleep is once: the node stays up
        assert node.sleeps == 1 and node.running


async def test_a_config_with_a_bad_sleep_window_is_refused(topics, make_node, mosquitto):
    node = make_node("sleepy-4")
    async with online(node, mosquitto, topics) as watch:
        mark = watch.mark()
        await watch.retain(NodeTopic.CONFIG, {"v": 1, "version": 2, "sleep": {"at": "25:00", "duration": 60}})
        log = await watch.wait("log", lambda e: e.get("code") == "bad_config", since=mark, timeout=15)
        assert "sleep.at must be HH:MM" in log["msg"]
        await watch.retain(NodeTopic.CONFIG, b"")


def test_availability_consumers_take_sleeping_as_expected(topics):
    # openHAB through Homie: a state of its own (Homie 4), not "lost"; telemetry stores it, not rejects it.
    assert homie_state("sleepy-5", SLEEPING)[1] == "sleeping" and homie_state("sleepy-5", "offline")[1] == "lost"
    now = time.time()
    decoded = Decoder(topics, retention_days=30, max_clock_ahead=86_400).decode(
        [Inbound(topics.status("sleepy-5"), b"sleeping", now, 1, 1)], now=now)
    assert not decoded.rejected and decoded.statuses == [("sleepy-5", False, now, True)]

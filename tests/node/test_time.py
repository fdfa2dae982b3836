"""Time without NTP, on the real interpreter, Mosquitto and the embedded amqtt: the node's RTC starts unset (year
2000) and no NTP server answers; it asks on ``clock``, the scheduler (the backend's time-keeper) answers with
``set/time``, and the node runs its rule at the right minute, saying in its info where its time came from."""

from __future__ import annotations

import asyncio
import time

from nodefleet.contracts import Info
from nodefleet.contracts.topics import NodeTopic
from services.scheduler.app import serve
from services.scheduler.settings import SchedulerSettings

from .conftest import SLOW, online

RTC_UNSET = 946684800  # 2000-01-01: where an ESP32's RTC starts after a power cut


def _aligned(lead: float) -> tuple[int, int, str]:
    # A start lead s from now, a tz offset that puts it on a whole local minute, and that HH:MM.
    start = int(time.time() + lead)
    offset = (-start) % 60
    local = (start + offset) % 86400
    return start, offset, f"{local // 3600:02d}:{local // 60 % 60:02d}"


async def test_a_node_without_ntp_takes_the_backend_time_and_runs_its_rule_on_the_minute(
        broker, topics, make_node, database):
    node = make_node("clockless", broker=broker, env={"NF_NTP": "0", "NF_CLOCK": str(RTC_UNSET)})
    async with online(node, broker, topics) as watch:
        assert watch.found("state")[-1]["time_valid"] is False
        assert Info.model_validate(await watch.wait("info")).clock is None
        await watch.wait("clock", timeout=15)  # it asks: its clock is unset

        settings = SchedulerSettings(mqtt_url=broker.url, database_url=database, topic_root=topics.root,
                                     fleet_root=topics.fleet, instance="time-a", grace=2.0, lease=2.0)
        ready = asyncio.Event()
        scheduler = asyncio.create_task(serve(settings, ready=ready))
        try:
            await asyncio.wait_for(ready.wait(), SLOW)
            # The retained online status is enough for the scheduler to offer its time (and the node asked).
            info = await watch.wait("info", lambda i: i.get("clock") == "backend", timeout=15)
            assert Info.model_validate(info).clock == "backend"
            board = await node.ctl()
            assert board["time_valid"] and abs(board["time"] - time.time()) < 2

            start, offset, at = _aligned(4)
            await watch.retain(NodeTopic.CONFIG, {"v": 1, "version": 2, "telemetry_period": 1, "ap_after": 1,
                                          "tz": [{"from": 0, "offset": offset}]})
            await watch.retain(NodeTopic.SCHEDULE, {"v": 1, "version": 1,
                                            "rules": [{"id": "water", "at": at, "duration": 3}]})
            mark = watch.mark()
            on = await watch.wait("state", lambda s: s["relay"] == "ON", since=mark, timeout=15)
            assert on["run_id"].startswith("water-") and start <= on["ts"] <= start + 1
            assert abs(time.time() - start) < 2  # on this machine's clock too: the right minute, not the RTC's
        finally:
            scheduler.cancel()
            await asyncio.gather(scheduler, return_exceptions=True)


async def test_backend_time_does_not_override_ntp(topics, make_node, mosquitto):
    node = make_node("ntp-node")
    async with online(node, mosquitto, topics) as watch:
        info = await watch.wait("info", lambda i: i.get("clock") == "ntp", timeout=10)
        assert info["clock"] == "ntp"
        before = (await node.ctl())["time"]
        ack = await watch.command("time", {"ts": 1795326600})
        assert ack["status"] == "ok"
        assert abs((await node.ctl())["time"] - before) < 5  # NTP's time is better: kept

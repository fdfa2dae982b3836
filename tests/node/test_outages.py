"""Outages: WiFi lost (schedule keeps running, access point opens, reconnect) and a broker restart."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from nodefleet.contracts import Schedule
from nodefleet.contracts.topics import NodeTopic

from .conftest import SLOW, until


def next_0600_utc(after: float) -> datetime:
    """The first 06:00 UTC at least a minute after ``after``: the node's clock only ever jumps forward to it."""
    moment = datetime.fromtimestamp(after + 60, UTC)
    due = moment.replace(hour=6, minute=0, second=0, microsecond=0)
    return due if due >= moment else due + timedelta(days=1)


async def test_wifi_lost_keeps_the_schedule_opens_the_ap_and_reconnects(node, watch):
    await watch.retain(NodeTopic.SCHEDULE, Schedule.model_validate({"v": 1, "version": 1, "rules": [
        {"id": "offline", "at": "06:00", "duration": 120}]}).model_dump(by_alias=True))
    await watch.command("logic", {"enabled": True})  # the schedule has been applied when this is acked
    written = (node.flash_dir / "schedule.json").stat().st_mtime_ns
    await node.ctl("wifi 0")
    mark = watch.mark()
    assert await watch.wait("status", lambda s: s == "offline", since=mark) == "offline"
    await until(node, lambda b: b["led"] in ("no_wifi", "ap"))
    # ap_after is 1 s in the test config.
    await until(node, lambda b: b["ap"] and b["led"] == "ap")

    # The rule comes due while offline: it runs on the local clock (telemetry taken before the jump is older).
    due = next_0600_utc((await node.ctl())["time"])
    await node.ctl(f"clock {int(due.timestamp()) - 2}")
    await until(node, lambda b: b["relay"] == 1)
    # Telemetry keeps being taken (every second), buffered on the node: a few periods, so a loaded machine
    # (three test workers, libfaketime) still takes one after the clock jump (1.5 s once caught none).
    await asyncio.sleep(3.5)

    mark = watch.mark()
    back = (await node.ctl("wifi 1"))["time"]
    assert await watch.wait("status", lambda s: s == "online", since=mark, timeout=15) == "online"
    state = await watch.wait("state", since=mark)
    assert state["relay"] == "ON" and state["rule"] == "offline" and state["run_id"] == f"offline-{due:%Y%m%d}"
    await until(node, lambda b: not b["ap"] and b["led"] == "ok")
    # Taken offline after the clock was set (whatever today's date), delivered after the reconnect: what waited
    # in the node's queue goes out before the status it publishes on connecting. Which samples the queue's byte
    # budget kept depends on the reconnect burst (status, info, state), so any of them will do.
    kinds = [k for k, _, _ in watch.messages[mark:]]
    queued = watch.found("telemetry", since=mark)[:kinds[:kinds.index("status")].count("telemetry")]
    [buffered, *_] = [t for t in queued if due.timestamp() - 2 <= t.get("ts", 0) <= back]
    assert buffered["readings"]["heap_min"] > 0
    ack = await watch.command("switch", {"state": "OFF"})
    assert ack["status"] == "ok"
    # The retained schedule came again with the reconnect; unchanged, it is not written to flash again.
    assert (node.flash_dir / "schedule.json").stat().st_mtime_ns == written


async def test_broker_restart_reconnects_and_resubscribes(own_broker):
    await own_broker.stop()
    async with own_broker.restart() as watch:
        assert await watch.wait("status", lambda s: s == "online", timeout=SLOW) == "online"
        ack = await watch.command("switch", {"state": "ON"}, timeout=SLOW)
        assert ack["status"] == "ok" and (await own_broker.node.ctl())["relay"] == 1
        lost = await watch.wait("log", lambda e: e["code"] == "mqtt_lost", timeout=SLOW)
        assert lost["level"] == "warning" and "broker connection lost" in lost["msg"]


async def test_offline_queue_is_bounded_and_counts_what_it_drops(make_node, watch):
    node = make_node()
    mqtt = node.read("mqtt.json")
    node.write("mqtt.json", {**mqtt, "max_queue": 4})
    await node.start()
    await watch.wait("state", timeout=15)
    await node.ctl("wifi 0")
    await asyncio.sleep(7)  # one telemetry message a second: more than the queue holds
    mark = watch.mark()
    await node.ctl("wifi 1")
    await watch.wait("status", lambda s: s == "online", since=mark, timeout=15)
    await watch.wait("telemetry", lambda t: t["readings"]["mqtt_dropped"] > 0, since=mark, timeout=5)
    # What was kept is the newest, in order; seq shows the gap the drops left.
    seqs = [t["seq"] for t in watch.found("telemetry", since=mark)]
    assert seqs == sorted(seqs)


async def test_power_cuts_during_flash_writes_never_corrupt_the_files(node, watch):
    for round_ in range(3):
        for i in range(60):
            await watch.send("switch", {"state": "ON" if i % 2 else "OFF", "id": f"w{round_}-{i}"}, qos=0)
        await asyncio.sleep(0.05 * (round_ + 1))  # somewhere in the middle of the writes
        await node.kill()
        for name in ("state.json", "seq.json", "boot.json", "errlog.json", "config.json", "wifi.json", "mqtt.json"):
            path = node.flash_dir / name
            if path.exists():
                json.loads(path.read_text())  # every file is whole: old or new, never half
        mark = watch.mark()
        await node.start()
        await watch.wait("state", since=mark, timeout=15)
    ack = await watch.command("switch", {"state": "ON"})
    assert ack["status"] == "ok"
    assert node.read("boot.json")["count"] == 4


async def test_frequent_qos0_telemetry_does_not_starve_the_keepalive(node, watch):
    # Telemetry every second (QoS 0, no answer) at keepalive 5 s: the node still pings when it has heard nothing,
    # so its own silence check (1.5 x keepalive) never ends a healthy session. Before the fix: a reconnect every 7.5 s.
    await watch.wait("status", lambda s: s == "online", timeout=SLOW)
    mark = watch.mark()
    await asyncio.sleep(11)
    assert len(watch.found("telemetry", since=mark)) >= 5  # the QoS 0 stream went on
    lost = [e for e in (node.read("errlog.json") or {}).get("items", []) if e["code"] == "mqtt_lost"]
    assert lost == [], lost
    assert watch.found("status", since=mark) == []  # no offline / online in between

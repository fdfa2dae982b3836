"""NodeLogic on the node: rules fire on local time, run ids, no time no rule, power cut resumes a window."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from nodefleet.contracts import Schedule
from nodefleet.contracts.topics import NodeTopic

MONDAY_0600_UTC = int(datetime(2026, 11, 23, 6, 0, tzinfo=UTC).timestamp())
BERLIN_WINTER = [{"from": 1761440400, "offset": 3600}]


def schedule(*rules: dict) -> dict:
    return Schedule.model_validate({"v": 1, "version": 1, "rules": list(rules)}).model_dump(by_alias=True)


async def test_a_rule_fires_on_local_time_and_a_run_is_never_repeated(make_node, watch):
    node = make_node(config={"tz": BERLIN_WINTER})
    await node.start()
    await watch.wait("state")
    # 06:00 local in Berlin (UTC+1) is 05:00 UTC; start two seconds before.
    await node.ctl(f"clock {MONDAY_0600_UTC - 3600 - 2}")
    await watch.retain(NodeTopic.SCHEDULE, schedule(
        {"id": "morning", "at": "06:00", "duration": 2, "days": ["mon"]},
        {"id": "tuesday", "at": "06:00", "duration": 60, "days": ["tue"]},
    ))
    on = await watch.wait("state", lambda s: s["relay"] == "ON", timeout=8)
    assert on["rule"] == "morning" and on["run_id"] == "morning-20261123" and on["mode"] == "auto"
    assert on["until"] == MONDAY_0600_UTC - 3600 + 2
    off = await watch.wait("state", lambda s: s["relay"] == "OFF" and s["seq"] > on["seq"], timeout=8)
    assert "run_id" not in off

    # The scheduler's backup of the same run is a no-op; a new run id is carried out.
    mark = watch.mark()
    ack = await watch.command("switch", {"state": "ON", "until": MONDAY_0600_UTC, "run_id": "morning-20261123"})
    assert ack["status"] == "ok" and (await node.ctl())["relay"] == 0
    assert not watch.found("state", lambda s: s["relay"] == "ON", since=mark)
    ack = await watch.command("switch", {"state": "ON", "until": MONDAY_0600_UTC, "run_id": "extra-20261123"})
    assert ack["status"] == "ok" and (await node.ctl())["relay"] == 1


async def test_no_rule_fires_without_valid_time(make_node, watch):
    node = make_node(env={"NF_NTP": "0"})
    await node.start()
    await watch.retain(NodeTopic.SCHEDULE, schedule({"id": "always", "at": "00:00", "duration": 86400}))
    state = await watch.wait("state")
    assert state["time_valid"] is False and "ts" not in state
    time.sleep(0.1)
    board = await node.ctl()
    assert board["relay"] == 0
    await _led(node, "no_time")

    mark = watch.mark()
    await watch.send("time", {"v": 1, "ts": int(time.time())})
    on = await watch.wait("state", lambda s: s["relay"] == "ON", since=mark)
    assert on["time_valid"] is True and on["rule"] == "always"
    await _led(node, "ok")


async def test_power_cut_inside_a_window_resumes_it(make_node, watch):
    now = int(time.time())
    start = time.gmtime(now - 600)
    rule = {"id": "water", "at": f"{start.tm_hour:02d}:{start.tm_min:02d}", "duration": 3600}
    node = make_node(config={"power_on": "schedule"})
    node.write("schedule.json", schedule(rule))
    await node.start()
    on = await watch.wait("state", lambda s: s["relay"] == "ON")
    until = on["until"]

    await node.kill()  # power cut
    node.env["NF_NTP"] = "0"  # and no NTP after it: the node waits for time before resuming
    mark = watch.mark()
    await node.start()
    first = await watch.wait("state", since=mark)
    assert first["relay"] == "OFF" and first["time_valid"] is False
    assert (await node.ctl())["relay"] == 0

    await watch.send("time", {"v": 1, "ts": int(time.time())})
    resumed = await watch.wait("state", lambda s: s["relay"] == "ON", since=mark)
    assert resumed["run_id"] == on["run_id"] and resumed["until"] == until
    info = watch.found("info")[-1]
    assert info["boot_count"] == 2


async def test_power_on_off_does_not_resume(make_node, watch):
    now = int(time.time())
    start = time.gmtime(now - 600)
    node = make_node(config={"power_on": "off"})
    node.write("schedule.json", schedule({"id": "water", "at": f"{start.tm_hour:02d}:{start.tm_min:02d}", "duration": 3600}))
    await node.start()
    await watch.wait("state", lambda s: s["relay"] == "ON")
    await node.kill()
    mark = watch.mark()
    await node.start()
    await watch.wait("state", since=mark)
    await watch.command("logic", {"enabled": True})  # a round trip: the logic ticked meanwhile
    assert (await node.ctl())["relay"] == 0


async def _led(node, pattern: str) -> None:
    import asyncio

    for _ in range(40):
        if (await node.ctl())["led"] == pattern:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"LED never showed {pattern}: {await node.ctl()}")

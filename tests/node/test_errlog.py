"""The error log: a ring on flash with crash reports, published once connected, surviving reboots."""

from __future__ import annotations

import asyncio

from conftest import wait_for

from nodefleet.contracts import Log

from .conftest import SLOW


async def test_a_crash_report_survives_the_reboot_and_is_published(node, watch):
    await node.ctl("wifi 0")  # offline: the report can only reach the broker after the reboot
    mark = watch.mark()
    await node.ctl("crash injected-by-test")
    for _ in range(100):
        if node.restarts:
            break
        await asyncio.sleep(0.05)
    assert node.restarts == 1
    entry = await watch.wait("log", lambda e: e["code"] == "crash", since=mark, timeout=15)
    log = Log.model_validate(entry)
    assert log.level == "critical" and "injected-by-test" in (log.trace or "") and "RuntimeError" in log.msg
    info = await watch.wait("info", since=mark)
    assert info["boot_reason"] == "soft" and info["boot_count"] == 2
    # Published entries stay in the ring for the local page, marked as sent.
    for _ in range(50):
        saved = node.read("errlog.json")
        if saved["sent"] > entry["seq"]:
            break
        await asyncio.sleep(0.1)
    assert saved["sent"] == entry["seq"] + 1 and saved["items"][-1]["code"] == "crash"

    # After another reboot nothing already sent is published again.
    mark = watch.mark()
    await node.stop()
    await node.start()
    await watch.wait("state", since=mark)
    await watch.command("logic", {"enabled": True})
    assert not watch.found("log", lambda e: e["code"] == "crash", since=mark)


async def test_the_ring_is_bounded(node, watch):
    mark = watch.mark()
    for i in range(20):
        await watch.send("switch", f"bad-{i}")
    await watch.wait("log", lambda e: "bad-19" not in e["msg"] and e["seq"] >= 19, since=mark, timeout=10)
    saved = node.read("errlog.json")
    assert len(saved["items"]) == 16 and saved["next"] >= 20

    # A flood of bad input is rate-limited before it reaches the flash: 30 warnings a minute at most.
    for i in range(30):
        await watch.send("switch", f"worse-{i}")
    await watch.command("logic", {"enabled": True})  # a round trip: the flood has been handled
    assert node.read("errlog.json")["next"] == 30
    assert (await watch.command("switch", {"state": "ON"}))["status"] == "ok"


async def test_an_abnormal_reset_is_logged_with_its_cause(make_node, watch):
    node = make_node()
    await node.start(reset_cause="watchdog")
    entry = await watch.wait("log", lambda e: e["code"] == "reset", timeout=15)
    assert entry["reset_cause"] == "watchdog" and entry["level"] == "error"
    assert (await watch.wait("info"))["boot_reason"] == "watchdog"


async def test_entries_made_during_an_outage_are_published_once(own_broker):
    node = own_broker.node

    def ring() -> dict:
        return node.read("errlog.json") or {"next": 0, "sent": 0, "items": []}

    def all_sent() -> bool:
        saved = ring()
        return saved["sent"] == saved["next"]

    await own_broker.stop()
    # Reconnects keep failing: "broker connection lost", then one "cannot reach the broker".
    await wait_for(lambda: {"mqtt_lost", "mqtt_connect"} <= {i["code"] for i in ring()["items"]},
                   timeout=SLOW, interval=0.1)
    async with own_broker.restart() as watch:
        await watch.wait("log", lambda e: e["code"] == "mqtt_connect", timeout=SLOW)
        await wait_for(all_sent, timeout=SLOW, interval=0.1)  # the broker acknowledged every entry
        # A round trip: whatever the node queued before this ack has arrived too.
        await watch.command("logic", {"enabled": True}, timeout=SLOW)
        entries = watch.found("log")
        seqs = [e["seq"] for e in entries]
        saved = ring()
        assert seqs == list(range(seqs[0], saved["next"])), seqs  # each once, in order, none missing
        assert {"mqtt_lost", "mqtt_connect"} <= {e["code"] for e in entries}
        assert saved["sent"] == saved["next"]

"""Every kind of node message ends up in PostgreSQL, once."""

from __future__ import annotations

import json
import time

from nodefleet.contracts import Topics

from conftest import wait_for


async def _count(db, sql: str, *args) -> int:
    return await db.fetchval(sql, *args)


async def test_telemetry_rows_with_and_without_device_time(service, publisher, topics: Topics):
    now = time.time()
    for seq in range(5):
        body = {"v": 1, "seq": seq, "ts": now - 10 + seq, "readings": {"temperature": 20 + seq, "rssi": -60}}
        await publisher.publish(topics.telemetry("n1"), json.dumps(body), qos=1)
    await publisher.publish(topics.telemetry("n1"), json.dumps({"v": 1, "seq": 99, "readings": {"heap_free": 1}}), qos=1)
    await wait_for(lambda: _count(service.db, "SELECT count(*) FROM telemetry"), timeout=10)
    await wait_for(lambda: _rows_equal(service.db, 6))
    rows = await service.db.fetch("SELECT seq, device_clock, readings, extract(epoch FROM time)::float8 AS t FROM telemetry ORDER BY seq")
    assert [r["seq"] for r in rows] == [0, 1, 2, 3, 4, 99]
    assert json.loads(rows[0]["readings"]) == {"temperature": 20, "rssi": -60}
    assert abs(rows[0]["t"] - (now - 10)) < 1e-3
    assert rows[-1]["device_clock"] is False
    seen = await service.db.fetchrow("SELECT first_seen, last_seen FROM nodes WHERE node = 'n1'")
    assert seen is not None


async def _rows_equal(db, n: int) -> bool:
    return await db.fetchval("SELECT count(*) FROM telemetry") == n


async def test_redelivered_telemetry_is_stored_once(service, publisher, topics: Topics):
    timed = json.dumps({"v": 1, "seq": 7, "ts": time.time(), "readings": {"temperature": 1}})
    untimed = json.dumps({"v": 1, "seq": 8, "readings": {"temperature": 2}})
    for _ in range(3):
        await publisher.publish(topics.telemetry("dup"), timed, qos=1)
        await publisher.publish(topics.telemetry("dup"), untimed, qos=1)
    await wait_for(lambda: _rows_equal(service.db, 2))
    # Later copies (different received times) are recognised too.
    await publisher.publish(topics.telemetry("dup"), untimed, qos=1)
    await publisher.publish(topics.telemetry("dup"), timed, qos=1)
    await publisher.publish(topics.telemetry("dup"), json.dumps({"v": 1, "seq": 9, "readings": {}}), qos=1)
    await wait_for(lambda: _rows_equal(service.db, 3))
    assert await service.db.fetchval("SELECT count(*) FROM telemetry WHERE seq = 8") == 1


async def test_state_keeps_the_newest_seq(service, publisher, topics: Topics):
    for seq, relay in ((5, "ON"), (3, "OFF"), (6, "OFF"), (4, "ON")):
        body = {"v": 1, "seq": seq, "relay": relay, "mode": "auto", "ts": time.time()}
        await publisher.publish(topics.state("s1"), json.dumps(body), qos=1)
    await wait_for(lambda: _count(service.db, "SELECT count(*) FROM node_state WHERE seq = 6"))
    await publisher.publish(topics.state("s1"), json.dumps({"v": 1, "seq": 2, "relay": "ON", "mode": "manual"}), qos=1)
    await publisher.publish(topics.telemetry("s1"), json.dumps({"v": 1, "seq": 1, "readings": {}}), qos=1)
    await wait_for(lambda: _rows_equal(service.db, 1))
    row = await service.db.fetchrow("SELECT seq, relay, mode FROM node_state WHERE node = 's1'")
    assert (row["seq"], row["relay"], row["mode"]) == (6, "OFF", "auto")


async def test_availability_history_records_changes_only(service, publisher, topics: Topics):
    for i, status in enumerate(("online", "online", "offline", "offline", "online")):
        await publisher.publish(topics.status("a1"), status, qos=1)
        await publisher.publish(topics.telemetry("a1"), json.dumps({"v": 1, "seq": i, "readings": {}}), qos=1)
    # The last status went before the last telemetry row, on the same connection.
    await wait_for(lambda: _count(service.db, "SELECT count(*) FROM telemetry WHERE seq = 4"))
    history = await service.db.fetch("SELECT online FROM availability WHERE node = 'a1' ORDER BY id")
    assert [r["online"] for r in history] == [True, False, True]
    node = await service.db.fetchrow("SELECT online, availability_changed FROM nodes WHERE node = 'a1'")
    assert node["online"] is True and node["availability_changed"] is not None


async def test_info_log_and_ack_are_stored(service, publisher, topics: Topics):
    info = {"v": 1, "chip_id": "a4cf12e3b0f4", "fw": "0.1.0", "caps": ["switch"], "boot_count": 3}
    log = {"v": 1, "seq": 9, "ts": time.time(), "level": "error", "code": "mqtt_lost", "msg": "lost", "reset_cause": "watchdog"}
    ack = {"v": 1, "id": "cmd-1", "status": "error", "error": "busy", "state_seq": 4}
    await publisher.publish(topics.info("i1"), json.dumps(info), qos=1)
    await publisher.publish(topics.log("i1"), json.dumps(log), qos=1)
    await publisher.publish(topics.log("i1"), json.dumps(log), qos=1)
    await publisher.publish(topics.ack("i1"), json.dumps(ack), qos=1)
    await wait_for(lambda: _count(service.db, "SELECT count(*) FROM command_acks"))
    await wait_for(lambda: _count(service.db, "SELECT count(*) FROM node_info"))
    await wait_for(lambda: _count(service.db, "SELECT count(*) FROM device_logs"))
    assert await service.db.fetchval("SELECT fw FROM node_info WHERE node = 'i1'") == "0.1.0"
    assert await service.db.fetchval("SELECT count(*) FROM device_logs WHERE node = 'i1' AND code = 'mqtt_lost'") == 1
    assert await service.db.fetchval("SELECT error FROM command_acks WHERE node = 'i1' AND id = 'cmd-1'") == "busy"

"""Fleet queries answered over MQTT; migrations idempotent; retention drops whole partitions."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import asyncpg
import pytest
from conftest import wait_for

from nodefleet.contracts import Topics
from nodefleet.contracts.queries import DeviceRow, LogRow, LogsQuery, TelemetryQuery, TelemetryRow
from nodefleet.fleet import RequestError, replies_to
from nodefleet.wire import BrokerAddress, Client
from services.telemetry import schema
from services.telemetry.app import maintain
from services.telemetry.db import create_pool

from .helpers import make_settings, start, stop


async def _ask(mosquitto, topics: Topics, action: str, data) -> object:
    requester_id = f"cli-{uuid.uuid4().hex[:8]}"
    async with (Client(BrokerAddress.parse(mosquitto.url), client_id=requester_id) as mqtt,
                replies_to(mqtt, topics, client_id=requester_id) as requester):
        return await requester.request("telemetry", action, data, timeout=5)


async def test_fleet_queries_answer_devices_telemetry_and_logs(service, publisher, mosquitto, topics: Topics):
    now = time.time()
    await publisher.publish(topics.status("q1"), "online", qos=1)
    await publisher.publish(topics.info("q1"), json.dumps({"v": 1, "chip_id": "c1", "fw": "1.2.3"}), qos=1)
    await publisher.publish(topics.state("q1"), json.dumps({"v": 1, "seq": 4, "relay": "ON", "mode": "manual"}), qos=1)
    for seq in range(3):
        body = {"v": 1, "seq": seq, "ts": now - 60 + seq, "readings": {"temperature": 20.0 + seq}}
        await publisher.publish(topics.telemetry("q1"), json.dumps(body), qos=1)
    for seq in range(2):
        body = {"v": 1, "seq": seq, "ts": now - 30 + seq, "code": f"e{seq}", "msg": "boom"}
        await publisher.publish(topics.log("q1"), json.dumps(body), qos=1)
    await wait_for(lambda: service.db.fetchval("SELECT count(*) = 2 FROM device_logs"), timeout=10)

    devices = [DeviceRow.model_validate(row) for row in await _ask(mosquitto, topics, "devices", {})]
    assert [(d.node, d.online, d.relay, d.mode, d.state_seq, d.fw) for d in devices] == [
        ("q1", True, "ON", "manual", 4, "1.2.3")
    ]
    rows = await _ask(mosquitto, topics, "telemetry", TelemetryQuery(node="q1", since=now - 3600))
    parsed = [TelemetryRow.model_validate(row) for row in rows]
    assert [r.seq for r in parsed] == [0, 1, 2]
    assert parsed[2].readings == {"temperature": 22.0}
    limited = await _ask(mosquitto, topics, "telemetry", TelemetryQuery(node="q1", since=now - 3600, until=now - 59.5))
    assert [row["seq"] for row in limited] == [0]
    logs = [LogRow.model_validate(row) for row in await _ask(mosquitto, topics, "logs", LogsQuery(node="q1", limit=1))]
    assert [(g.seq, g.code) for g in logs] == [(1, "e1")]
    with pytest.raises(RequestError, match="node"):
        await _ask(mosquitto, topics, "telemetry", {"since": 0})
    with pytest.raises(RequestError, match="unknown action"):
        await _ask(mosquitto, topics, "nope", {})


async def test_service_status_is_retained_online(service, mosquitto, topics: Topics):
    async with Client(BrokerAddress.parse(mosquitto.url), client_id=f"w-{uuid.uuid4().hex[:8]}") as mqtt:
        await mqtt.subscribe(topics.service_status("telemetry", service.settings.instance), qos=1)
        async with asyncio.timeout(5):
            async for message in mqtt.messages:
                assert message.payload == b"online" and message.retain
                break


async def test_migrations_are_idempotent_and_a_second_start_changes_nothing(mosquitto, database, topics: Topics):
    conn = await asyncpg.connect(database)
    try:
        # Two instances migrating at once: the advisory lock serialises them, each file applies once.
        first, second = await asyncio.gather(schema.migrate(conn), _migrate_in_another_connection(database))
        assert sorted(first + second) == [m.version for m in schema.load_migrations()]
        assert await schema.migrate(conn) == []
        settings = make_settings(mosquitto, database, topics)
        task = await start(settings)
        await stop(task)
        task = await start(settings)
        await stop(task)
        versions = await conn.fetch("SELECT version FROM schema_migrations")
        assert [r["version"] for r in versions] == [m.version for m in schema.load_migrations()]
    finally:
        await conn.close()


async def _migrate_in_another_connection(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return await schema.migrate(conn)
    finally:
        await conn.close()


async def test_retention_drops_whole_old_partitions(service, publisher, mosquitto, database, topics: Topics):
    now = time.time()
    for seq, age_days in enumerate((10, 9, 1, 0)):
        body = {"v": 1, "seq": seq, "ts": now - age_days * 86_400, "readings": {"temperature": 1}}
        await publisher.publish(topics.telemetry("r1"), json.dumps(body), qos=1)
    await wait_for(lambda: service.db.fetchval("SELECT count(*) = 4 FROM telemetry"), timeout=10)
    before = await schema.existing_partitions(service.db)
    assert schema.day_of(now - 10 * 86_400) in before

    pool = await create_pool(database)
    try:
        short = make_settings(mosquitto, database, topics, retention_days=5)
        dropped = await maintain(pool, short, now=now)
    finally:
        await pool.close()
    assert sorted(dropped) == sorted({schema.partition_name(schema.day_of(now - d * 86_400)) for d in (10, 9)})
    assert sorted(r["seq"] for r in await service.db.fetch("SELECT seq FROM telemetry")) == [2, 3]
    after = await schema.existing_partitions(service.db)
    assert min(after) >= schema.day_of(now - 5 * 86_400)
    assert schema.day_of(now) + short.partitions_ahead in after

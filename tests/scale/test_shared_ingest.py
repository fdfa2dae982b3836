"""Two telemetry instances split one QoS 1 stream through ``$share``; ``kill -9`` of one loses and doubles nothing.

Both instances run as their own processes (``python -m services.telemetry``), on
Mosquitto and on the embedded broker, against the same PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
from conftest import wait_for
from telemetry.process import Load, ServiceProcess

from nodefleet.contracts import Topics


def _env(broker_url: str, database: str, topics: Topics, name: str) -> dict[str, str]:
    return {
        "NODEFLEET_MQTT_URL": broker_url,
        "NODEFLEET_DATABASE_URL": database,
        "NODEFLEET_TOPIC_ROOT": topics.root,
        "NODEFLEET_FLEET_ROOT": topics.fleet,
        "NODEFLEET_INSTANCE": name,
        "NODEFLEET_TELEMETRY_CLIENT_ID": f"telemetry-{name}-{uuid.uuid4().hex[:6]}",
        "NODEFLEET_TELEMETRY_SHARED_GROUP": "ingest",
        # Slow, large batches: at the kill many messages are received but not yet committed.
        "NODEFLEET_TELEMETRY_FLUSH_INTERVAL": "0.5",
        "NODEFLEET_TELEMETRY_BATCH_SIZE": "50000",
        "NODEFLEET_TELEMETRY_DB_RETRY_MAX": "1",
    }


async def _stored(database: str) -> tuple[int, set[tuple[str, int]]]:
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch("SELECT node, seq FROM telemetry")
    finally:
        await conn.close()
    return len(rows), {(r["node"], r["seq"]) for r in rows}


def _stored_by(service: ServiceProcess) -> int:
    """Rows the instance reported at its last clean stop (``telemetry_stopped``)."""
    stored = 0
    for line in service.log_path.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "telemetry_stopped":
            stored += event.get("stored", 0)
    return stored


async def test_two_instances_kill_9_one_mid_stream(broker, database, topics: Topics):
    one = ServiceProcess(_env(broker.url, database, topics, "one"))
    two = ServiceProcess(_env(broker.url, database, topics, "two"))
    for service in (one, two):
        service.start()
    try:
        await one.wait_ready()
        await two.wait_ready()
        load = Load(broker.url, topics, nodes=20)
        stream = asyncio.create_task(load.run(400, rate=4000))  # 8,000 messages over about 2 s
        await wait_for(lambda: load.sent >= 3000, timeout=20)
        one.kill()
        killed_at = load.sent
        await asyncio.sleep(0.5)
        # Restarted with the same client id: it takes up its session, and what the broker kept for it.
        one.start()
        await one.wait_ready()
        await stream
        deadline = asyncio.get_running_loop().time() + 30
        count, keys = await _stored(database)
        while not load.acked <= keys and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.5)
            count, keys = await _stored(database)
    finally:
        one.stop()
        two.stop()
    assert killed_at < load.sent, "the kill must fall in the middle of the stream"
    assert len(load.acked) == load.sent == 8000
    assert load.acked <= keys, f"{len(load.acked - keys)} acknowledged messages were lost"
    assert count == len(keys), f"{count - len(keys)} rows are duplicates"
    print(f"survivor stored {_stored_by(two)} of {count}")
    # Both shared the stream: the survivor stored part of it, not all of it.
    assert 0 < _stored_by(two) < 8000, _stored_by(two)

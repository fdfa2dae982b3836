"""Crash and outage: every message the broker accepted is stored exactly once.

The service runs as its own process (``python -m services.telemetry``),
configured by environment variables only, as in a container.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from conftest import wait_for

from nodefleet.contracts import Topics

from .helpers import make_settings, start, stop
from .process import Load, ServiceProcess


def _env(mosquitto_url: str, database: str, topics: Topics, **extra: str) -> dict[str, str]:
    return {
        "NODEFLEET_MQTT_URL": mosquitto_url,
        "NODEFLEET_DATABASE_URL": database,
        "NODEFLEET_TOPIC_ROOT": topics.root,
        "NODEFLEET_FLEET_ROOT": topics.fleet,
        "NODEFLEET_INSTANCE": "reliability",
        "NODEFLEET_TELEMETRY_CLIENT_ID": f"telemetry-{uuid.uuid4().hex[:8]}",
        "NODEFLEET_TELEMETRY_DB_RETRY_MAX": "1",
        **extra,
    }


async def _stored(database: str) -> tuple[int, set[tuple[str, int]]]:
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch("SELECT node, seq FROM telemetry")
    finally:
        await conn.close()
    return len(rows), {(r["node"], r["seq"]) for r in rows}


async def _all_stored(database: str, load: Load, timeout: float) -> tuple[int, set[tuple[str, int]]]:
    """Rows once every acknowledged message is stored, or as they are when ``timeout`` runs out."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        count, keys = await _stored(database)
        if load.acked <= keys or asyncio.get_running_loop().time() > deadline:
            return count, keys
        await asyncio.sleep(0.5)


async def test_kill_9_mid_stream_loses_and_duplicates_nothing(mosquitto, database, topics: Topics):
    # Slow, large batches: at the kill many messages are received but not yet committed.
    service = ServiceProcess(_env(
        mosquitto.url, database, topics,
        NODEFLEET_TELEMETRY_FLUSH_INTERVAL="0.5", NODEFLEET_TELEMETRY_BATCH_SIZE="50000",
    ))
    service.start()
    try:
        await service.wait_ready()
        load = Load(mosquitto.url, topics, nodes=20)
        stream = asyncio.create_task(load.run(400, rate=4000))  # 8,000 messages over about 2 s
        await wait_for(lambda: load.sent >= 3000, timeout=20)
        service.kill()
        killed_at = load.sent
        await asyncio.sleep(0.5)
        service.start()
        await service.wait_ready()
        await stream
        count, keys = await _all_stored(database, load, timeout=30)
    finally:
        service.stop()
    assert killed_at < load.sent, "the kill must fall in the middle of the stream"
    assert len(load.acked) == load.sent == 8000
    assert load.acked <= keys, f"{len(load.acked - keys)} acknowledged messages were lost"
    assert count == len(keys), f"{count - len(keys)} rows are duplicates"


async def test_database_down_at_start_then_an_outage_under_load_loses_nothing(mosquitto, private_postgres, topics: Topics):
    database = private_postgres.dsn("nodefleet")
    service = ServiceProcess(_env(mosquitto.url, database, topics, NODEFLEET_TELEMETRY_BUFFER_LIMIT="5000"))
    await asyncio.to_thread(private_postgres.stop, "fast")
    service.start()
    try:
        # PostgreSQL down at start: the service waits for it, saying so, and comes up once it is there.
        await wait_for(lambda: "database_unavailable" in service.events(), timeout=20)
        assert service.process.poll() is None and "telemetry_ready" not in service.events()
        await asyncio.to_thread(private_postgres.start)
        await service.wait_ready()
        load = Load(mosquitto.url, topics, nodes=20)
        stream = asyncio.create_task(load.run(1500, rate=1000))  # 30,000 messages over about 30 s
        await wait_for(lambda: load.sent >= 4000, timeout=20)
        rss_before = service.rss_mb()
        await asyncio.to_thread(private_postgres.stop, "fast")
        rss_during = rss_before
        for _ in range(40):  # 20 s without the database
            await asyncio.sleep(0.5)
            rss_during = max(rss_during, service.rss_mb())
            assert service.process.poll() is None, "the service must survive the outage"
        sent_during_outage = load.sent
        await asyncio.to_thread(private_postgres.start)
        await stream
        count, keys = await _all_stored(database, load, timeout=90)
        rss_after = service.rss_mb()
        events = service.events()
    finally:
        service.stop()
    print(f"RSS before {rss_before:.1f} MB, during outage max {rss_during:.1f} MB, after {rss_after:.1f} MB")
    assert sent_during_outage > 4000 + 10_000, "the load must go on during the outage"
    assert "batch_write_failed" in events
    assert load.acked <= keys, f"{len(load.acked - keys)} acknowledged messages were lost"
    assert count == len(keys), f"{count - len(keys)} rows are duplicates"
    assert len(load.acked) == load.sent == 30_000
    # Back-pressure holds messages in the broker, not in the service.
    assert rss_during < rss_before + 40, f"RSS grew from {rss_before:.1f} to {rss_during:.1f} MB"


async def test_two_instances_share_the_load_without_duplicates(mosquitto, database, topics: Topics):
    first = make_settings(mosquitto, database, topics, shared_group="telemetry", instance="one")
    second = make_settings(mosquitto, database, topics, shared_group="telemetry", instance="two")
    tasks = [await start(first), await start(second)]
    try:
        load = Load(mosquitto.url, topics, nodes=20)
        await load.run(100, rate=4000)
        count, keys = await _all_stored(database, load, timeout=30)
    finally:
        for task in tasks:
            await stop(task)
    assert load.acked <= keys and count == len(keys) == 2000

"""A 3-server NATS cluster as the engine: nodes speak MQTT to any server, telemetry reads a JetStream durable consumer.

Under a QoS 1 stream, ``kill -9`` of one NATS server (the one the publisher is
on: it reconnects to another and sends again what was not acknowledged) and
``kill -9`` of one of two telemetry instances (the consumer hands its
unacknowledged messages to the other after ``ack_wait``): every acknowledged
message is stored, once.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import nats
import pytest
from conftest import wait_for
from telemetry.process import ServiceProcess

from nodefleet.contracts import Topics
from nodefleet.embedded.nats import NatsCluster
from nodefleet.wire.jetstream import MQTT_STREAM, servers_of

from .cluster_load import FailoverLoad

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cluster():
    with NatsCluster(3) as running:
        yield running


def _telemetry(cluster: NatsCluster, database: str, topics: Topics, name: str) -> ServiceProcess:
    return ServiceProcess({
        "NODEFLEET_MQTT_URL": cluster.mqtt_url(2),  # the control plane; ingest reads the stream of any server
        "NODEFLEET_ENGINE_URL": cluster.url,
        "NODEFLEET_DATABASE_URL": database,
        "NODEFLEET_TOPIC_ROOT": topics.root,
        "NODEFLEET_FLEET_ROOT": topics.fleet,
        "NODEFLEET_INSTANCE": name,
        "NODEFLEET_TELEMETRY_CLIENT_ID": f"telemetry-{name}-{uuid.uuid4().hex[:6]}",
        "NODEFLEET_TELEMETRY_SHARED_GROUP": f"ingest-{uuid.uuid4().hex[:6]}",
        "NODEFLEET_TELEMETRY_ACK_WAIT": "3",
        "NODEFLEET_TELEMETRY_FLUSH_INTERVAL": "0.5",
        "NODEFLEET_TELEMETRY_BATCH_SIZE": "50000",
        "NODEFLEET_TELEMETRY_DB_RETRY_MAX": "1",
    })


async def _stored_all(database: str, acked: set[tuple[str, int]], timeout: float) -> tuple[int, set[tuple[str, int]]]:
    deadline = asyncio.get_running_loop().time() + timeout
    conn = await asyncpg.connect(database)
    try:
        while True:
            rows = await conn.fetch("SELECT node, seq FROM telemetry")
            keys = {(r["node"], r["seq"]) for r in rows}
            if acked <= keys or asyncio.get_running_loop().time() > deadline:
                return len(rows), keys
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def _all_acknowledged(cluster: NatsCluster, group: str, timeout: float = 15.0) -> None:
    """The group's durable consumers (one per filter) have nothing pending and nothing unacknowledged:
    every commit was acknowledged."""
    nc = await nats.connect(servers_of(cluster.url))
    try:
        js = nc.jetstream()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            infos = [i for i in await js.consumers_info(MQTT_STREAM) if i.name.startswith(f"{group}-")]
            assert infos, f"no durable consumer of group {group}"
            waiting = {i.name: (i.num_pending, i.num_ack_pending) for i in infos if i.num_pending or i.num_ack_pending}
            if not waiting:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"group {group}: (pending, unacked) {waiting}")
            await asyncio.sleep(0.5)
    finally:
        await nc.close()


async def _two_instances(cluster: NatsCluster, database: str, topics: Topics) -> list[ServiceProcess]:
    group = f"ingest-{uuid.uuid4().hex[:6]}"
    services = [_telemetry(cluster, database, topics, name) for name in ("one", "two")]
    for service in services:
        service.env["NODEFLEET_TELEMETRY_SHARED_GROUP"] = group
        service.start()
    for service in services:
        await service.wait_ready(60)
    return services


async def test_kill_9_of_a_nats_server_loses_and_duplicates_nothing(cluster, database, topics: Topics):
    services = await _two_instances(cluster, database, topics)
    try:
        load = FailoverLoad([cluster.mqtt_url(i) for i in range(3)], topics, nodes=20)
        stream = asyncio.create_task(load.run(400, rate=4000))  # 8,000 messages over about 2 s
        await wait_for(lambda: load.sent >= 3000, timeout=30)
        cluster.kill(0)  # the publisher's server
        killed_at = load.sent
        await stream
        count, keys = await _stored_all(database, load.acked, timeout=40)
        await _all_acknowledged(cluster, services[0].env["NODEFLEET_TELEMETRY_SHARED_GROUP"])
    finally:
        for service in services:
            service.stop()
    print(f"publisher reconnects {load.reconnects}, rows {count}")
    assert killed_at < load.sent, "the kill must fall in the middle of the stream"
    assert load.reconnects >= 1, "the publisher must have moved to another server"
    assert len(load.acked) == 8000
    assert load.acked <= keys, f"{len(load.acked - keys)} acknowledged messages were lost"
    assert count == len(keys), f"{count - len(keys)} rows are duplicates"


async def test_kill_9_of_one_of_two_instances_loses_and_duplicates_nothing(cluster, database, topics: Topics):
    one, two = await _two_instances(cluster, database, topics)
    try:
        load = FailoverLoad([cluster.mqtt_url(i) for i in range(3)], topics, nodes=20)
        stream = asyncio.create_task(load.run(400, rate=4000))
        await wait_for(lambda: load.sent >= 3000, timeout=30)
        one.kill()  # not restarted: the consumer gives its unacknowledged messages to the other instance
        killed_at = load.sent
        await stream
        count, keys = await _stored_all(database, load.acked, timeout=40)
        await _all_acknowledged(cluster, two.env["NODEFLEET_TELEMETRY_SHARED_GROUP"])
    finally:
        one.stop()
        two.stop()
    assert killed_at < load.sent, "the kill must fall in the middle of the stream"
    assert len(load.acked) == 8000
    assert load.acked <= keys, f"{len(load.acked - keys)} acknowledged messages were lost"
    assert count == len(keys), f"{count - len(keys)} rows are duplicates"

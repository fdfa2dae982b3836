"""The telemetry service: node topics and scheduler run events in, PostgreSQL out, fleet queries answered.

Start order: database reachable (retried with backoff), schema migrated,
partitions ready, then the ingest session subscribes.  ``ready`` is set once
ingest is subscribed and the control plane answers requests.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from nodefleet.contracts import NodeTopic
from nodefleet.contracts.queries import TELEMETRY_SERVICE
from nodefleet.fleet import ErrorReporter
from nodefleet.logging import get_logger
from nodefleet.ratelimit import RateLimits
from nodefleet.wire import BrokerAddress, ingest_subscriber

from . import schema
from .control import ControlPlane
from .db import TRANSIENT, create_pool, retry_forever
from .decode import Decoder
from .ingest import Ingest
from .queries import Queries
from .settings import TelemetrySettings
from .writer import BatchWriter

log = get_logger(__name__)

SUBSCRIBED_KINDS = (NodeTopic.TELEMETRY, NodeTopic.STATE, NodeTopic.STATUS, NodeTopic.INFO, NodeTopic.LOG, NodeTopic.ACK)

_EXPIRE = (
    "DELETE FROM device_logs WHERE received < now() - make_interval(days => $1)",
    "DELETE FROM availability WHERE time < now() - make_interval(days => $1)",
    "DELETE FROM command_acks WHERE received < now() - make_interval(days => $1)",
    "DELETE FROM run_events WHERE time < now() - make_interval(days => $1)",
)


async def maintain(pool: asyncpg.Pool, settings: TelemetrySettings, *, now: float | None = None) -> list[str]:
    """Create the coming daily partitions, drop expired ones and old rows; return dropped partitions."""
    now = time.time() if now is None else now
    today = schema.day_of(now)
    async with pool.acquire() as conn:
        await schema.create_partitions(conn, set(range(today - 1, today + settings.partitions_ahead + 1)))
        dropped = await schema.drop_expired(conn, retention_days=settings.retention_days, now=now)
        for sql in _EXPIRE:
            await conn.execute(sql, settings.log_retention_days)
    return dropped


async def _maintenance_loop(pool: asyncpg.Pool, settings: TelemetrySettings) -> None:
    while True:
        await asyncio.sleep(settings.maintenance_interval)
        try:
            await maintain(pool, settings)
        except (*TRANSIENT, asyncpg.PostgresError) as exc:
            # Partitions are created ahead and on demand, so a missed run is retried at the next one.
            log.warning("maintenance_failed", error=str(exc) or type(exc).__name__)


def node_filters(settings: TelemetrySettings) -> list[str]:
    """What ingest takes: the node topics it stores and the scheduler's run events."""
    return [*(settings.topics.all_nodes(kind) for kind in SUBSCRIBED_KINDS), settings.topics.scheduler_events()]


def ingest_filters(settings: TelemetrySettings) -> list[str]:
    """The MQTT subscriptions of ingest on one broker: shared ones when instances split the stream."""
    filters = node_filters(settings)
    if settings.shared_group:
        filters = [settings.topics.shared(settings.shared_group, f) for f in filters]
    return filters


async def _prepare_database(settings: TelemetrySettings) -> asyncpg.Pool:
    pool = await retry_forever("connect", lambda: create_pool(settings.database_url), max_delay=settings.db_retry_max)

    async def migrate_and_maintain() -> None:
        async with pool.acquire() as conn:
            await schema.migrate(conn)
        await maintain(pool, settings)

    await retry_forever("migrate", migrate_and_maintain, max_delay=settings.db_retry_max)
    return pool


async def serve(settings: TelemetrySettings, *, ready: asyncio.Event | None = None) -> None:
    """Run the telemetry service until cancelled."""
    log.info("telemetry_starting", broker=BrokerAddress.parse(settings.mqtt_url).url, client_id=settings.client_id,
             engine=settings.engine_url or "mqtt", group=settings.shared_group)
    pool = await _prepare_database(settings)
    errors = ErrorReporter(TELEMETRY_SERVICE, settings.topics)
    subscriber = ingest_subscriber(
        settings.mqtt_url, settings.engine_url, client_id=settings.client_id, group=settings.shared_group,
        filters=node_filters(settings), keepalive=settings.keepalive, buffer_limit=settings.buffer_limit,
        ack_wait=settings.ack_wait,
    )
    writer = BatchWriter(settings.database_url, dedup_window=settings.dedup_window, max_delay=settings.db_retry_max)
    limits = RateLimits(settings.node_limit, settings.node_limit_window) if settings.node_limit else None
    decoder = Decoder(settings.topics, retention_days=settings.retention_days, max_clock_ahead=settings.max_clock_ahead,
                      limits=limits)
    ingest = Ingest(subscriber, decoder, writer, errors, batch_size=settings.batch_size, flush_interval=settings.flush_interval)
    control = ControlPlane(settings, Queries(pool).handlers(), errors)
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(subscriber.run())
            group.create_task(ingest.run())
            group.create_task(control.run())
            group.create_task(_maintenance_loop(pool, settings))
            await subscriber.subscribed.wait()
            await control.ready.wait()
            log.info("telemetry_ready")
            if ready is not None:
                ready.set()
    finally:
        await subscriber.disconnect()
        await writer.close()
        pool.terminate()
        log.info("telemetry_stopped", received=ingest.stats.received, stored=ingest.stats.stored,
                 rejected=ingest.stats.rejected)

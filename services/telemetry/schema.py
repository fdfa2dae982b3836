"""Versioned schema migrations and the daily partitions of the telemetry table.

Migrations are the files ``migrations/NNN_name.sql``, applied in order, each
once, recorded in ``schema_migrations``.  Every instance applies them at
start under a transaction-scoped advisory lock, so concurrent instances
never race.  Partition creation and retention take a second advisory lock.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from nodefleet import migrations
from nodefleet.logging import get_logger
from nodefleet.migrations import Migration

log = get_logger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
DAY = 86_400
# Arbitrary constants naming our advisory locks (pg_advisory_xact_lock takes a bigint).
MIGRATION_LOCK = 0x6E6F_6465_0001
PARTITION_LOCK = 0x6E6F_6465_0002
_PARTITION = re.compile(r"^telemetry_p(\d{8})$")


def load_migrations(folder: Path = MIGRATIONS) -> list[Migration]:
    return migrations.load_migrations(folder)


async def migrate(conn: asyncpg.Connection, steps: list[Migration] | None = None) -> list[int]:
    """Apply the telemetry migrations not yet applied; return their versions."""
    steps = load_migrations() if steps is None else steps
    return await migrations.migrate(conn, steps, table="schema_migrations", lock=MIGRATION_LOCK)


def day_of(epoch: float) -> int:
    """Days since 1970-01-01 (UTC) of an epoch time: the partition key."""
    return int(epoch // DAY)


def partition_name(day: int) -> str:
    return "telemetry_p" + datetime.fromtimestamp(day * DAY, UTC).strftime("%Y%m%d")


def partition_day(name: str) -> int | None:
    match = _PARTITION.match(name)
    if not match:
        return None
    return day_of(datetime.strptime(match[1], "%Y%m%d").replace(tzinfo=UTC).timestamp())


async def existing_partitions(conn: asyncpg.Connection) -> set[int]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'telemetry'::regclass"
    )
    return {day for row in rows if (day := partition_day(row["relname"])) is not None}


async def create_partitions(conn: asyncpg.Connection, days: set[int]) -> set[int]:
    """Create the daily partitions of ``days`` that do not exist; return the days created."""
    created: set[int] = set()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
        missing = days - await existing_partitions(conn)
        for day in sorted(missing):
            start = datetime.fromtimestamp(day * DAY, UTC)
            end = datetime.fromtimestamp((day + 1) * DAY, UTC)
            await conn.execute(
                f"CREATE TABLE {partition_name(day)} PARTITION OF telemetry"
                f" FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
            )
            created.add(day)
    if created:
        log.info("partitions_created", partitions=[partition_name(d) for d in sorted(created)])
    return created


async def drop_expired(conn: asyncpg.Connection, *, retention_days: int, now: float | None = None) -> list[str]:
    """Drop every partition wholly older than the retention; return their names."""
    now = time.time() if now is None else now
    # A partition goes once its last instant is older than now - retention.
    oldest_kept = day_of(now - retention_days * DAY)
    dropped = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
        for day in sorted(await existing_partitions(conn)):
            if day < oldest_kept:
                name = partition_name(day)
                await conn.execute(f"DROP TABLE {name}")
                dropped.append(name)
    if dropped:
        log.info("partitions_dropped", partitions=dropped, retention_days=retention_days)
    return dropped

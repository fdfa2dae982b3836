"""The scheduler's own tables in PostgreSQL: run events (also the backup claims), last valid schedules and the
schedule changes it applied.

A backup is claimed by inserting its ``backup`` event: (node, run_id, kind) is
the primary key, so of two instances only one insert wins.  ``sent`` stays NULL
until the command went out; a claim left unsent longer than the lease (its
instance died) is taken over by another instance.  A claim made ahead of its
due second (``reserve``) carries the due time as its ``ts``, so the lease
counts from then.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from nodefleet import migrations, pg_errors
from nodefleet.backoff import Backoff
from nodefleet.logging import get_logger
from nodefleet.migrations import Migration

from .rulebook import Run

log = get_logger(__name__)

MIGRATIONS = [
    """
    CREATE TABLE scheduler_events (
        node text NOT NULL,
        run_id text NOT NULL,
        kind text NOT NULL,
        rule text NOT NULL,
        action text NOT NULL,
        start double precision NOT NULL,
        "end" double precision NOT NULL,
        ts double precision NOT NULL,
        instance text NOT NULL,
        detail text,
        sent double precision,
        PRIMARY KEY (node, run_id, kind)
    );
    CREATE INDEX scheduler_events_node_ts ON scheduler_events (node, ts DESC);
    CREATE TABLE scheduler_schedules (
        node text PRIMARY KEY,
        body text NOT NULL,
        updated double precision NOT NULL
    );
    """,
    # Schedule changes (scheduler/set): the version beside each body, and each change applied, by its id.
    """
    ALTER TABLE scheduler_schedules ADD COLUMN version integer;
    UPDATE scheduler_schedules SET version = (body::jsonb ->> 'version')::integer;
    CREATE TABLE scheduler_changes (
        change text PRIMARY KEY,
        node text NOT NULL,
        body text NOT NULL,
        ts double precision NOT NULL
    );
    """,
]
_LOCK = 0x5C4ED01E  # advisory lock: two instances starting together migrate one after the other

TRANSIENT = pg_errors.TRANSIENT  # re-exported for the planner
_SCHEDULE_LOCK = 0x5C4ED02E  # advisory lock class of a node's schedule changes (with hashtext(node))

_CLAIM = """
    INSERT INTO scheduler_events (node, run_id, kind, rule, action, start, "end", ts, instance, detail)
    SELECT n, r, $1, ru, a, s, e, $2, $3, d
    FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::float8[], $9::float8[], $10::text[])
         AS u(n, r, ru, a, s, e, d)
    WHERE $1 <> 'backup' OR NOT EXISTS (
        SELECT 1 FROM scheduler_events x WHERE x.node = u.n AND x.run_id = u.r AND x.kind = 'run')
    ON CONFLICT DO NOTHING
    RETURNING node, run_id"""

Event = tuple[str, Run, str | None]
"""(node, run, detail) of one event to record."""


class Store:
    def __init__(self, pool: asyncpg.Pool, instance: str) -> None:
        self.pool = pool
        self.instance = instance

    @classmethod
    async def open(cls, dsn: str, instance: str, *, max_delay: float = 10.0) -> Store:
        """Connect (retrying while the server is not there yet) and migrate."""
        backoff = Backoff(most=max_delay, reset_after=float("inf"))
        while True:
            try:
                pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, timeout=10)
                break
            except TRANSIENT as exc:
                log.warning("database_unavailable", error=str(exc) or type(exc).__name__, retry_in=round(backoff.next_pause, 2))
                await backoff.wait()
        store = cls(pool, instance)
        await store.migrate()
        await store.warm_up()
        return store

    async def warm_up(self) -> None:
        """Prepare the claim on every pooled connection, so the first due second does not pay for planning it."""
        connections = [await self.pool.acquire() for _ in range(self.pool.get_max_size())]
        try:
            for conn in connections:
                await conn.fetch(_CLAIM, "backup", 0.0, self.instance, [], [], [], [], [], [], [])
        finally:
            for conn in connections:
                await self.pool.release(conn)

    async def close(self) -> None:
        self.pool.terminate()

    async def migrate(self) -> None:
        steps = [Migration(version, "scheduler", sql) for version, sql in enumerate(MIGRATIONS, start=1)]
        async with self.pool.acquire() as conn:
            await migrations.migrate(conn, steps, table="scheduler_migrations", lock=_LOCK)

    # -- events and claims -------------------------------------------------
    async def record(self, kind: str, events: Sequence[Event], *, ts: float | None = None) -> list[Event]:
        """Insert events of one kind; the ones this call inserted (the others were recorded already)."""
        if not events:
            return []
        rows = await self.pool.fetch(_CLAIM, kind, time.time() if ts is None else ts, self.instance, *_columns(events))
        won = {(row["node"], row["run_id"]) for row in rows}
        return [e for e in events if (e[0], e[1].run_id) in won]

    async def claim(self, events: Sequence[Event]) -> list[Event]:
        """Claim backups; the ones this instance won (and must send)."""
        return await self.record("backup", events)

    async def reserve(self, events: Sequence[Event], due: float) -> list[Event]:
        """Claim backups ahead of their due time; the ones this instance won.

        The claim is stamped with ``due``, not now: another instance takes it over (``take_over``) only once
        the lease has passed after the due time, so a reservation is no one else's to send before then.
        """
        return await self.record("backup", events, ts=due)

    async def withdraw(self, claims: Sequence[tuple[str, str]]) -> int:
        """Delete this instance's unsent claims of (node, run_id): reserved, then not needed after all."""
        if not claims:
            return 0
        result = await self.pool.execute(
            """DELETE FROM scheduler_events e USING unnest($1::text[], $2::text[]) AS u(n, r)
               WHERE e.node = u.n AND e.run_id = u.r AND e.kind = 'backup' AND e.sent IS NULL AND e.instance = $3""",
            [n for n, _ in claims], [r for _, r in claims], self.instance)
        return int(result.split()[-1])

    async def take_over(self, node: str, run_id: str, lease: float) -> bool:
        """Take an unsent claim older than ``lease`` seconds (its instance died); True if it is ours now."""
        now = time.time()
        row = await self.pool.fetchrow(
            """UPDATE scheduler_events SET instance = $3, ts = $4::float8
               WHERE node = $1 AND run_id = $2 AND kind = 'backup' AND sent IS NULL AND ts < $4::float8 - $5::float8
               RETURNING 1""", node, run_id, self.instance, now, lease)
        return row is not None

    async def claim_state(self, node: str, run_id: str) -> str:
        """``sent``, ``pending`` (claimed, not sent yet) or ``none``."""
        sent = await self.pool.fetchval(
            "SELECT coalesce(sent, 0) FROM scheduler_events WHERE node = $1 AND run_id = $2 AND kind = 'backup'",
            node, run_id)
        return "none" if sent is None else "sent" if sent else "pending"

    async def mark_sent(self, sent: Sequence[tuple[str, str]]) -> None:
        if not sent:
            return
        await self.pool.execute(
            """UPDATE scheduler_events e SET sent = $1
               FROM unnest($2::text[], $3::text[]) AS u(n, r)
               WHERE e.node = u.n AND e.run_id = u.r AND e.kind = 'backup'""",
            time.time(), [n for n, _ in sent], [r for _, r in sent])

    async def prune(self, days: int) -> int:
        before = time.time() - days * 86400
        await self.pool.execute("DELETE FROM scheduler_changes WHERE ts < $1", before)
        result = await self.pool.execute("DELETE FROM scheduler_events WHERE ts < $1", before)
        return int(result.split()[-1])

    # -- last valid schedules ----------------------------------------------
    async def save_schedule(self, node: str, body: dict[str, Any] | None) -> None:
        """Keep a retained schedule; one older than the version held (arriving late) leaves the newer one."""
        if body is None:
            await self.pool.execute("DELETE FROM scheduler_schedules WHERE node = $1", node)
            return
        await self.pool.execute(
            """INSERT INTO scheduler_schedules (node, body, updated, version) VALUES ($1, $2, $3, $4)
               ON CONFLICT (node) DO UPDATE SET body = EXCLUDED.body, updated = EXCLUDED.updated,
                                                version = EXCLUDED.version
               WHERE scheduler_schedules.version IS NULL OR scheduler_schedules.version <= EXCLUDED.version""",
            node, json.dumps(body), time.time(), body["version"])

    async def schedules(self) -> dict[str, dict[str, Any]]:
        rows = await self.pool.fetch("SELECT node, body FROM scheduler_schedules")
        return {row["node"]: json.loads(row["body"]) for row in rows}

    async def change_schedule(self, node: str, change: str, edit: Callable[[dict[str, Any] | None], dict[str, Any]],
                              publish: Callable[[str, dict[str, Any]], Awaitable[None]]) -> dict[str, Any]:
        """Apply ``edit`` to the node's current schedule, ``publish`` the result and keep it; the schedule after ``change``.

        One change per node at a time across instances: the advisory lock is held
        until the new version is published and stored.  A change recorded already
        (another instance applied it) is answered from the record.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _SCHEDULE_LOCK, node)
            done = await conn.fetchval("SELECT body FROM scheduler_changes WHERE change = $1", change)
            if done is not None:
                return json.loads(done)
            current = await conn.fetchval("SELECT body FROM scheduler_schedules WHERE node = $1", node)
            new = edit(json.loads(current) if current is not None else None)
            await publish(node, new)
            body, now = json.dumps(new), time.time()
            await conn.execute(
                """INSERT INTO scheduler_schedules (node, body, updated, version) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (node) DO UPDATE SET body = EXCLUDED.body, updated = EXCLUDED.updated,
                                                    version = EXCLUDED.version""",
                node, body, now, new["version"])
            await conn.execute("INSERT INTO scheduler_changes (change, node, body, ts) VALUES ($1, $2, $3, $4)",
                               change, node, body, now)
        return new


def _columns(events: Sequence[Event]) -> list[list[Any]]:
    return [
        [node for node, _, _ in events],
        [run.run_id for _, run, _ in events],
        [run.rule for _, run, _ in events],
        [run.action for _, run, _ in events],
        [float(run.start) for _, run, _ in events],
        [float(run.end) for _, run, _ in events],
        [detail for _, _, detail in events],
    ]

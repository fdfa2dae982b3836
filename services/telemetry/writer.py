"""Write one decoded batch in one transaction, idempotently, retrying until it is committed.

Telemetry goes through COPY into a temporary staging table, then one
``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` into the partitioned table,
so a redelivered message (same node, device time and seq) is stored once.
A row without device time gets its received time, which differs on
redelivery; it is recognised as a repeat only by a lookup of the same node
and seq within ``dedup_window`` seconds of its received time.
"""

from __future__ import annotations

import asyncpg

from nodefleet.backoff import Backoff
from nodefleet.errors import StorageUnavailable
from nodefleet.logging import get_logger

from . import schema
from .db import TRANSIENT, connect
from .decode import Decoded, Rejected

log = get_logger(__name__)

_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS telemetry_stage"
    " (node text, ts float8, received float8, seq int8, readings jsonb) ON COMMIT DELETE ROWS"
)
_STAGE_COLUMNS = ("node", "ts", "received", "seq", "readings")

_INSERT_TIMED = """
INSERT INTO telemetry (node, time, received, seq, device_clock, readings)
SELECT node, to_timestamp(ts), to_timestamp(received), seq, true, readings
FROM telemetry_stage WHERE ts IS NOT NULL
ON CONFLICT DO NOTHING
"""

_INSERT_UNTIMED = """
INSERT INTO telemetry (node, time, received, seq, device_clock, readings)
SELECT DISTINCT ON (s.node, s.seq) s.node, to_timestamp(s.received), to_timestamp(s.received), s.seq, false, s.readings
FROM telemetry_stage s
WHERE s.ts IS NULL AND NOT EXISTS (
    SELECT 1 FROM telemetry t
    WHERE t.node = s.node AND t.seq = s.seq AND NOT t.device_clock
      AND t.time BETWEEN to_timestamp(s.received - $1) AND to_timestamp(s.received + $1))
ORDER BY s.node, s.seq, s.received
ON CONFLICT DO NOTHING
"""

_SEEN = """
INSERT INTO nodes (node, first_seen, last_seen)
SELECT node, to_timestamp(first), to_timestamp(last) FROM unnest($1::text[], $2::float8[], $3::float8[]) AS s(node, first, last)
ON CONFLICT (node) DO UPDATE SET last_seen = GREATEST(nodes.last_seen, EXCLUDED.last_seen),
    removed = CASE WHEN EXCLUDED.last_seen > nodes.removed THEN NULL ELSE nodes.removed END
"""

_REMOVED = """
UPDATE nodes SET removed = to_timestamp($2) WHERE node = $1 AND last_seen <= to_timestamp($2)
"""

_STATUS = """
WITH changed AS (
    UPDATE nodes SET online = $2, sleeping = $4, availability_changed = to_timestamp($3)
    WHERE node = $1 AND (online IS DISTINCT FROM $2 OR sleeping IS DISTINCT FROM $4) RETURNING node)
INSERT INTO availability (node, online, time, sleeping) SELECT node, $2, to_timestamp($3), $4 FROM changed
"""

_STATE = """
INSERT INTO node_state (node, seq, relay, mode, rule, run_id, until, time, received, state)
VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7), to_timestamp($8), to_timestamp($9), $10)
ON CONFLICT (node) DO UPDATE SET
    seq = EXCLUDED.seq, relay = EXCLUDED.relay, mode = EXCLUDED.mode, rule = EXCLUDED.rule,
    run_id = EXCLUDED.run_id, until = EXCLUDED.until, time = EXCLUDED.time,
    received = EXCLUDED.received, state = EXCLUDED.state
WHERE node_state.seq < EXCLUDED.seq
"""

_INFO = """
INSERT INTO node_info (node, chip_id, fw, received, info) VALUES ($1, $2, $3, to_timestamp($4), $5)
ON CONFLICT (node) DO UPDATE SET
    chip_id = EXCLUDED.chip_id, fw = EXCLUDED.fw, received = EXCLUDED.received, info = EXCLUDED.info
WHERE node_info.received <= EXCLUDED.received
"""

_LOG = """
INSERT INTO device_logs (node, seq, time, received, level, code, msg, reset_cause, trace)
VALUES ($1, $2, to_timestamp($3), to_timestamp($4), $5, $6, $7, $8, $9)
ON CONFLICT DO NOTHING
"""

_ACK = """
INSERT INTO command_acks (node, id, status, error, state_seq, received)
VALUES ($1, $2, $3, $4, $5, to_timestamp($6))
ON CONFLICT DO NOTHING
"""


# One statement for a batch of run events (a scheduler burst is thousands); the key keeps
# a copy from a second scheduler instance or a redelivery out, also within one batch.
_RUN_EVENTS = """
INSERT INTO run_events (node, run_id, kind, rule, action, start, "end", time, received, sent, instance, detail)
SELECT node, run_id, kind, rule, action, to_timestamp(start), to_timestamp("end"), to_timestamp(ts),
       to_timestamp(received), to_timestamp(sent), instance, detail
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::float8[], $7::float8[], $8::float8[],
            $9::float8[], $10::float8[], $11::text[], $12::text[])
     AS e(node, run_id, kind, rule, action, start, "end", ts, received, sent, instance, detail)
ON CONFLICT DO NOTHING
"""


class BatchWriter:
    """Owns one connection (the staging table is per connection) and writes batches."""

    def __init__(self, dsn: str, *, dedup_window: float, max_delay: float = 10.0) -> None:
        self.dsn = dsn
        self.dedup_window = dedup_window
        self.max_delay = max_delay
        self.conn: asyncpg.Connection | None = None
        self._partitions: set[int] = set()
        self.batches = 0
        self.rows = 0
        self.failures = 0

    async def _connection(self) -> asyncpg.Connection:
        if self.conn is None or self.conn.is_closed():
            self.conn = await connect(self.dsn)
            await self.conn.execute(_STAGE)
            self._partitions = await schema.existing_partitions(self.conn)
        return self.conn

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.terminate()
            self.conn = None

    async def write(self, batch: Decoded) -> list[Rejected]:
        """Commit ``batch``, retrying passing failures forever; return rows refused by the database."""
        backoff = Backoff(most=self.max_delay, reset_after=float("inf"))
        one_by_one = refreshed = False
        while True:
            try:
                conn = await self._connection()
                await self._ensure_partitions(conn, batch)
                if one_by_one:
                    return await self._write_one_by_one(batch)
                async with conn.transaction():
                    await self._write(conn, batch)
                self.batches += 1
                self.rows += len(batch.telemetry)
                return []
            except (StorageUnavailable, *TRANSIENT) as exc:
                self.failures += 1
                log.warning("batch_write_failed", error=str(exc) or type(exc).__name__, retry_in=round(backoff.next_pause, 2),
                            telemetry=len(batch.telemetry))
                await self.close()
                await backoff.wait()
            except asyncpg.CheckViolationError as exc:
                if refreshed:
                    log.warning("batch_refused", error=str(exc))
                    one_by_one = True
                else:
                    # A partition we believed in was dropped by retention elsewhere: look again, create it.
                    refreshed = True
                    self._partitions = await schema.existing_partitions(conn)
            except asyncpg.PostgresError as exc:
                # Some value the database refuses (e.g. a NUL in a text): find it, keep the rest.
                log.warning("batch_refused", error=str(exc))
                one_by_one = True

    async def _ensure_partitions(self, conn: asyncpg.Connection, batch: Decoded) -> None:
        days = {schema.day_of(r.ts if r.ts is not None else r.received) for r in batch.telemetry}
        if days - self._partitions:
            await schema.create_partitions(conn, days - self._partitions)
            self._partitions |= days

    async def _write(self, conn: asyncpg.Connection, batch: Decoded) -> None:
        if batch.telemetry:
            await conn.copy_records_to_table(
                "telemetry_stage",
                records=[(r.node, r.ts, r.received, r.seq, r.readings) for r in batch.telemetry],
                columns=_STAGE_COLUMNS,
            )
            await conn.execute(_INSERT_TIMED)
            if any(r.ts is None for r in batch.telemetry):
                await conn.execute(_INSERT_UNTIMED, self.dedup_window)
        if batch.seen:
            # Sorted, so two instances lock the same nodes in the same order.
            nodes = sorted(batch.seen)
            await conn.execute(_SEEN, nodes, [batch.seen[n][0] for n in nodes], [batch.seen[n][1] for n in nodes])
        if batch.statuses:
            await conn.executemany(_STATUS, sorted(batch.statuses, key=lambda s: s[2]))
        if batch.removals:
            await conn.executemany(_REMOVED, sorted(batch.removals))
        if batch.states:
            await conn.executemany(_STATE, [
                (n, s.seq, s.relay, s.mode, s.rule, s.run_id, s.until, s.ts, r, s.model_dump_json())
                for n, s, r in batch.states
            ])
        if batch.infos:
            await conn.executemany(_INFO, [(n, i.chip_id, i.fw, r, i.model_dump_json()) for n, i, r in batch.infos])
        if batch.logs:
            await conn.executemany(_LOG, [
                (n, g.seq, g.ts, r, g.level, g.code, g.msg, g.reset_cause, g.trace) for n, g, r in batch.logs
            ])
        if batch.acks:
            await conn.executemany(_ACK, [(n, a.id, a.status, a.error, a.state_seq, r) for n, a, r in batch.acks])
        if batch.run_events:
            events = batch.run_events
            await conn.execute(
                _RUN_EVENTS,
                [n for n, _, _ in events], [e.run_id for _, e, _ in events], [e.kind for _, e, _ in events],
                [e.rule for _, e, _ in events], [e.action for _, e, _ in events], [e.start for _, e, _ in events],
                [e.end for _, e, _ in events], [e.ts for _, e, _ in events], [r for _, _, r in events],
                [e.sent for _, e, _ in events], [e.instance for _, e, _ in events], [e.detail for _, e, _ in events],
            )

    async def _write_one_by_one(self, batch: Decoded) -> list[Rejected]:
        refused: list[Rejected] = []
        singles: list[tuple[Decoded, str, str]] = []
        for row in batch.telemetry:
            singles.append((Decoded(telemetry=[row], seen=batch.seen), row.node, "telemetry"))
        for kind in ("statuses", "removals", "states", "infos", "logs", "acks", "run_events"):
            for item in getattr(batch, kind):
                singles.append((Decoded(seen=batch.seen, **{kind: [item]}), item[0], kind))
        for single, node, kind in singles:
            try:
                conn = await self._connection()
                async with conn.transaction():
                    await self._write(conn, single)
            except asyncpg.PostgresError as exc:
                if isinstance(exc, TRANSIENT):
                    raise
                refused.append(Rejected("unstorable", f"{kind}: {exc}"[:1024], kind, node))
        self.batches += 1
        return refused

"""Answers to the fleet requests the CLI sends (``devices``, ``telemetry``, ``logs``, ``run_events``)."""

from __future__ import annotations

from typing import Any

import asyncpg

from nodefleet.contracts.queries import (
    DeviceRow,
    DevicesQuery,
    LogRow,
    LogsQuery,
    RunEventsQuery,
    TelemetryQuery,
    TelemetryRow,
)
from nodefleet.contracts.scheduling import RunEventRow
from nodefleet.errors import StorageUnavailable
from nodefleet.fleet import TypedHandler, typed

from .db import TRANSIENT

_DEVICES = """
SELECT n.node, n.online, n.sleeping,
       CASE WHEN n.sleeping THEN (s.state->>'sleep_until')::float8 END AS sleep_until,
       extract(epoch FROM n.availability_changed)::float8 AS availability_changed,
       extract(epoch FROM n.last_seen)::float8 AS last_seen,
       s.relay, s.mode, s.seq AS state_seq, i.fw, i.chip_id
FROM nodes n LEFT JOIN node_state s USING (node) LEFT JOIN node_info i USING (node)
WHERE n.removed IS NULL
ORDER BY n.node
"""

_TELEMETRY = """
SELECT node, extract(epoch FROM time)::float8 AS time, extract(epoch FROM received)::float8 AS received, seq, readings
FROM telemetry
WHERE node = $1 AND time >= to_timestamp($2) AND time < to_timestamp(coalesce($3, 'infinity'::float8))
ORDER BY time, seq
LIMIT $4
"""

_LOGS = """
SELECT node, extract(epoch FROM received)::float8 AS received, extract(epoch FROM time)::float8 AS time,
       seq, level, code, msg, reset_cause, trace
FROM device_logs WHERE node = $1
ORDER BY received DESC, seq DESC
LIMIT $2
"""

_RUN_EVENTS = """
SELECT node, run_id, kind, rule, action, instance, detail,
       extract(epoch FROM time)::float8 AS ts, extract(epoch FROM start)::float8 AS start,
       extract(epoch FROM "end")::float8 AS "end", extract(epoch FROM sent)::float8 AS sent,
       extract(epoch FROM received)::float8 AS received
FROM run_events WHERE node = $1
ORDER BY time DESC, kind
LIMIT $2
"""


class Queries:
    """Read side over a connection pool; every answer is a list of row models."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        try:
            async with self.pool.acquire() as conn:
                return await conn.fetch(sql, *args)
        except TRANSIENT as exc:
            raise StorageUnavailable(f"the telemetry database is unavailable right now ({exc}); try again shortly") from exc

    async def devices(self, query: DevicesQuery) -> list[DeviceRow]:
        return [DeviceRow(**dict(row)) for row in await self._fetch(_DEVICES)]

    async def telemetry(self, query: TelemetryQuery) -> list[TelemetryRow]:
        rows = await self._fetch(_TELEMETRY, query.node, query.since, query.until, query.limit)
        return [TelemetryRow(**dict(row)) for row in rows]

    async def logs(self, query: LogsQuery) -> list[LogRow]:
        return [LogRow(**dict(row)) for row in await self._fetch(_LOGS, query.node, query.limit)]

    async def run_events(self, query: RunEventsQuery) -> list[RunEventRow]:
        return [RunEventRow(**dict(row)) for row in await self._fetch(_RUN_EVENTS, query.node, query.limit)]

    def handlers(self) -> dict[str, TypedHandler]:
        """Fleet request actions -> typed handlers (the actions and models: nodefleet/contracts/requests.py)."""
        return {"devices": typed(self.devices), "telemetry": typed(self.telemetry), "logs": typed(self.logs),
                "run_events": typed(self.run_events)}

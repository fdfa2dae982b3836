"""Connections to PostgreSQL: codecs, retry with backoff, and which errors are passing.

Raises :class:`nodefleet.errors.StorageUnavailable` when the database cannot be reached now.
"""

from __future__ import annotations

import json

import asyncpg

from nodefleet import pg_errors
from nodefleet.backoff import Backoff
from nodefleet.errors import StorageUnavailable
from nodefleet.logging import get_logger

log = get_logger(__name__)

TRANSIENT = pg_errors.TRANSIENT
"""Errors after which the same work can simply be retried later (re-exported for the telemetry modules)."""


def _encode_jsonb(value: str | dict | list) -> bytes:
    # Binary jsonb is a version byte (1) followed by the JSON text.
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return b"\x01" + text.encode()


def _decode_jsonb(data: bytes) -> object:
    return json.loads(data[1:])


async def setup_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", schema="pg_catalog", encoder=_encode_jsonb, decoder=_decode_jsonb, format="binary")


async def connect(dsn: str, *, timeout: float = 10.0) -> asyncpg.Connection:
    """One connection with our codecs; StorageUnavailable if the server cannot be reached."""
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except TRANSIENT as exc:
        raise StorageUnavailable(f"cannot reach PostgreSQL: {exc or type(exc).__name__}") from exc
    await setup_connection(conn)
    return conn


async def create_pool(dsn: str, *, size: int = 3) -> asyncpg.Pool:
    try:
        return await asyncpg.create_pool(dsn, min_size=1, max_size=size, init=setup_connection, timeout=10)
    except TRANSIENT as exc:
        raise StorageUnavailable(f"cannot reach PostgreSQL: {exc or type(exc).__name__}") from exc


async def retry_forever(what: str, attempt, *, max_delay: float = 10.0):
    """Await ``attempt()`` until it succeeds, logging each failure and backing off."""
    backoff = Backoff(most=max_delay, reset_after=float("inf"))
    while True:
        try:
            return await attempt()
        except (StorageUnavailable, *TRANSIENT) as exc:
            log.warning("database_unavailable", doing=what, error=str(exc) or type(exc).__name__,
                        retry_in=round(backoff.next_pause, 2))
        await backoff.wait()

"""The ota service's tables in PostgreSQL: releases, rollouts, their targets, and every transition.

A release is kept whole (manifest and image) so the service can stream it after
a restart; a rollout and its targets are written at every change, so a service
killed mid-rollout reads them back and carries on (``open_rollouts``); the
events are append-only and answer ``nodefleet ota history NODE``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import asyncpg

from nodefleet import migrations, pg_errors
from nodefleet.contracts.ota import Manifest
from nodefleet.errors import InputError, StorageError, StorageUnavailable
from nodefleet.migrations import Migration
from nodefleet.ota_release import Release

from .rollout import Actions, Policy, Rollout, Target

MIGRATIONS = [
    """
    CREATE TABLE ota_releases (
        version text PRIMARY KEY,
        sha256 text NOT NULL UNIQUE,
        format text NOT NULL,
        size integer NOT NULL,
        block_size integer NOT NULL,
        manifest jsonb NOT NULL,
        image bytea NOT NULL,
        created double precision NOT NULL
    );
    CREATE TABLE ota_rollouts (
        id text PRIMARY KEY,
        release text NOT NULL REFERENCES ota_releases (version),
        policy jsonb NOT NULL,
        stages jsonb NOT NULL,
        state text NOT NULL,
        stage integer NOT NULL,
        reason text,
        accepted jsonb NOT NULL DEFAULT '[]',
        created double precision NOT NULL,
        updated double precision NOT NULL
    );
    CREATE TABLE ota_targets (
        rollout text NOT NULL REFERENCES ota_rollouts (id) ON DELETE CASCADE,
        node text NOT NULL,
        stage integer NOT NULL,
        state text NOT NULL,
        since double precision NOT NULL,
        code text,
        reason text,
        offered boolean NOT NULL,
        PRIMARY KEY (rollout, node)
    );
    CREATE TABLE ota_events (
        id bigserial PRIMARY KEY,
        rollout text,
        node text,
        state text NOT NULL,
        code text,
        reason text,
        ts double precision NOT NULL
    );
    CREATE INDEX ota_events_node_ts ON ota_events (node, ts DESC);
    """,
]
_LOCK = 0x07A5E1EA  # advisory lock: instances starting together migrate one after the other
OPEN = ("running", "paused", "halted")


class OtaStoreError(StorageError):
    """What the ota tables hold cannot be used (a kept image that no longer matches its manifest)."""


class ReleaseConflict(InputError):
    """A release with this version (or this image) is already kept, with other contents."""


class UnknownRelease(InputError, LookupError):
    """No release with this version is kept."""


def _policy(stored: dict[str, Any]) -> Policy:
    return Policy(**{**stored, "stages": tuple(stored["stages"])})  # JSON has lists, the policy a tuple


class OtaStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, dsn: str) -> OtaStore:
        try:
            # No floor of idle connections: after an outage asyncpg would keep restoring it in the background,
            # logging a traceback at every try; a connection is made when one is needed.
            pool = await asyncpg.create_pool(dsn, min_size=0, max_size=4)
        except pg_errors.TRANSIENT as exc:
            raise StorageUnavailable(f"PostgreSQL is not reachable: {exc}") from exc
        store = cls(pool)
        try:
            async with store._connection() as conn:
                steps = [Migration(n + 1, f"ota_{n + 1}", sql) for n, sql in enumerate(MIGRATIONS)]
                await migrations.migrate(conn, steps, table="ota_schema_migrations", lock=_LOCK)
        except StorageUnavailable:
            pool.terminate()  # the server went away: nothing to close gracefully
            raise
        return store

    async def close(self) -> None:
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self, *, transaction: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection (in a transaction if asked); PostgreSQL away is StorageUnavailable, so the service's
        workers and requests see one error for it (fleet.answer says "database unavailable, try again")."""
        try:
            async with self.pool.acquire() as conn:
                if transaction:
                    async with conn.transaction():
                        yield conn
                else:
                    yield conn
        except pg_errors.TRANSIENT as exc:
            raise StorageUnavailable(f"PostgreSQL is not reachable: {exc or type(exc).__name__}") from exc

    # -- releases -------------------------------------------------------------
    async def add_release(self, release: Release, *, now: float) -> bool:
        """Keep a release; False if this very release is already kept (a retry), ReleaseConflict if another is."""
        m = release.manifest
        async with self._connection() as conn:
            inserted = await conn.fetchval(
                "INSERT INTO ota_releases (version, sha256, format, size, block_size, manifest, image, created)"
                " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8) ON CONFLICT DO NOTHING RETURNING true",
                m.version, m.sha256, m.format, m.size, m.block_size, m.model_dump_json(), release.image, now)
            if inserted:
                return True
            kept = await conn.fetchrow("SELECT version, sha256 FROM ota_releases WHERE version = $1 OR sha256 = $2",
                                       m.version, m.sha256)
        if kept is not None and (kept["version"], kept["sha256"]) == (m.version, m.sha256):
            return False
        if kept is not None and kept["version"] == m.version:
            raise ReleaseConflict(f"release {m.version} is already kept with another image: give this one a new "
                                  f"version (nodefleet ota build --version ...)")
        raise ReleaseConflict(f"this image is already kept as release {kept['version'] if kept else '?'}")

    async def release(self, version: str) -> Release:
        async with self._connection() as conn:
            row = await conn.fetchrow("SELECT manifest, image FROM ota_releases WHERE version = $1", version)
        if row is None:
            raise UnknownRelease(f"no release {version} is kept: hand it over first (nodefleet ota release FILE)")
        manifest = Manifest.model_validate_json(row["manifest"])
        image = bytes(row["image"])
        if hashlib.sha256(image).hexdigest() != manifest.sha256:
            raise OtaStoreError(f"the kept image of release {version} does not match its manifest: hand it over again")
        return Release(manifest=manifest, image=image)

    async def releases(self) -> list[dict[str, Any]]:
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT version, sha256, format, size, block_size, created FROM ota_releases"
                                    " ORDER BY created")
        return [dict(row) for row in rows]

    # -- rollouts -------------------------------------------------------------
    async def save_rollout(self, rollout: Rollout, *, now: float) -> None:
        """Write the rollout and all its targets (at its start, and after an operator's change)."""
        async with self._connection(transaction=True) as conn:
            await conn.execute(
                "INSERT INTO ota_rollouts"
                " (id, release, policy, stages, state, stage, reason, accepted, created, updated)"
                " VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6, $7, $8::jsonb, $9, $9)"
                " ON CONFLICT (id) DO UPDATE SET state = $5, stage = $6, reason = $7, accepted = $8::jsonb,"
                " updated = $9",
                rollout.id, rollout.release, json.dumps(asdict(rollout.policy)), json.dumps(rollout.stages),
                rollout.state, rollout.stage, rollout.reason, json.dumps(sorted(rollout.accepted)), now)
            await conn.executemany(
                "INSERT INTO ota_targets (rollout, node, stage, state, since, code, reason, offered)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (rollout, node) DO UPDATE SET"
                " state = $4, since = $5, code = $6, reason = $7, offered = $8",
                [(rollout.id, t.node, t.stage, t.state, t.since, t.code, t.reason, t.offered)
                 for t in rollout.targets.values()])

    async def record(self, rollout: Rollout, actions: Actions, *, now: float) -> None:
        """A step's transitions, the targets it touched and the rollout's own state, in one transaction."""
        touched = {t.node for t in actions.transitions} | set(actions.offer) | set(actions.withdraw)
        async with self._connection(transaction=True) as conn:
            await conn.executemany(
                "INSERT INTO ota_events (rollout, node, state, code, reason, ts) VALUES ($1, $2, $3, $4, $5, $6)",
                [(rollout.id, t.node, t.state, t.code, t.reason, now) for t in actions.transitions]
                + ([(rollout.id, None, actions.state, None, actions.reason, now)] if actions.state else []))
            await conn.executemany(
                "UPDATE ota_targets SET state = $3, since = $4, code = $5, reason = $6, offered = $7"
                " WHERE rollout = $1 AND node = $2",
                [(rollout.id, t.node, t.state, t.since, t.code, t.reason, t.offered)
                 for t in rollout.targets.values() if t.node in touched])
            await conn.execute(
                "UPDATE ota_rollouts SET state = $2, stage = $3, reason = $4, accepted = $5::jsonb, updated = $6"
                " WHERE id = $1", rollout.id, rollout.state, rollout.stage, rollout.reason,
                json.dumps(sorted(rollout.accepted)), now)

    async def event(self, *, node: str | None, state: str, rollout: str | None = None, code: str | None = None,
                    reason: str | None = None, now: float) -> None:
        """A transition outside a rollout's step (a node's progress with no rollout, a rollout's own state)."""
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO ota_events (rollout, node, state, code, reason, ts) VALUES ($1, $2, $3, $4, $5, $6)",
                rollout, node, state, code, reason, now)

    async def open_rollouts(self) -> list[Rollout]:
        """Every rollout not finished, as it was last written (what a restarted service carries on with)."""
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT * FROM ota_rollouts WHERE state = ANY($1::text[]) ORDER BY created",
                                    list(OPEN))
            targets = await conn.fetch("SELECT * FROM ota_targets WHERE rollout = ANY($1::text[])",
                                       [row["id"] for row in rows])
        return self._rollouts(rows, targets)

    async def rollout(self, id: str) -> Rollout | None:
        """One rollout, open or finished, as it was last written; None if there is none of that id."""
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT * FROM ota_rollouts WHERE id = $1", id)
            targets = await conn.fetch("SELECT * FROM ota_targets WHERE rollout = $1", id)
        found = self._rollouts(rows, targets)
        return found[0] if found else None

    @staticmethod
    def _rollouts(rows: list[asyncpg.Record], targets: list[asyncpg.Record]) -> list[Rollout]:
        by_rollout: dict[str, dict[str, Target]] = {}
        for t in targets:
            by_rollout.setdefault(t["rollout"], {})[t["node"]] = Target(
                node=t["node"], stage=t["stage"], state=t["state"], since=t["since"], code=t["code"],
                reason=t["reason"], offered=t["offered"])
        return [Rollout(id=row["id"], release=row["release"], policy=_policy(json.loads(row["policy"])),
                        stages=json.loads(row["stages"]), targets=by_rollout.get(row["id"], {}), state=row["state"],
                        stage=row["stage"], reason=row["reason"], accepted=set(json.loads(row["accepted"])))
                for row in rows]

    async def history(self, node: str, *, limit: int = 100) -> list[dict[str, Any]]:
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT rollout, state, code, reason, ts FROM ota_events WHERE node = $1"
                                    " ORDER BY ts DESC, id DESC LIMIT $2", node, limit)
        return [dict(row) for row in rows]

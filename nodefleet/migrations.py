"""Versioned SQL migrations, applied once each, in order, under an advisory lock.

Each service keeps its own migration table (several services may share one
database) and its own lock id, so instances starting together migrate one
after the other instead of racing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from .errors import StorageError
from .logging import get_logger

log = get_logger(__name__)

_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_TABLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class MigrationError(StorageError):
    """A migration file is misnamed, or a migration failed to apply."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(folder: Path) -> list[Migration]:
    """The ``NNN_name.sql`` files of ``folder``, in version order."""
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(f"migration file {path.name!r} must be named NNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version in {folder}")
    return found


async def migrate(conn: asyncpg.Connection, migrations: list[Migration], *, table: str, lock: int) -> list[int]:
    """Apply the migrations not yet recorded in ``table``; return the versions applied."""
    if not _TABLE.fullmatch(table):
        raise MigrationError(f"bad migration table name {table!r}")
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            " version integer PRIMARY KEY, name text NOT NULL, applied timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await conn.fetch(f"SELECT version FROM {table}")}
        applied = []
        for migration in migrations:
            if migration.version in done:
                continue
            try:
                await conn.execute(migration.sql)
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {migration.version:03d}_{migration.name} failed: {exc}") from exc
            await conn.execute(f"INSERT INTO {table} (version, name) VALUES ($1, $2)", migration.version, migration.name)
            applied.append(migration.version)
    if applied:
        log.info("schema_migrated", table=table, applied=applied)
    return applied

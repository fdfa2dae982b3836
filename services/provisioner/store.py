r"""The registry in PostgreSQL: homes and devices, with versioned migrations.

Migrations are ``migrations/NNN_name.sql``, applied once each in order under
an advisory lock and recorded in ``provisioner_schema_migrations`` (distinct
from the telemetry service's table, as both may share one database).

Errors at this seam are :class:`~nodefleet.errors.InputError` (ValueErrors,
so a fleet request answers them as errors; the tree is in :mod:`nodefleet.errors`)::

    RegistryError              bad input the registry refused
        Conflict               a name, chip id or state clash
    NotFound (LookupError)     no such home, device or provisioning id
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from nodefleet import migrations
from nodefleet.errors import InputError
from nodefleet.logging import get_logger

log = get_logger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 0x6E6F_6465_0101

_DEVICE_COLUMNS = ("node, home_id, device_name, provisioning_id, chip_id, status, created, expires, first_connected, "
                   "last_seen, username, config, config_version, config_applied, caps, refused_code, refused_chip, refused_reason")


class RegistryError(InputError):
    """Input the registry refuses; the message says what to do."""


class Conflict(RegistryError):
    """The request clashes with what is registered (a taken name, a bound chip id, a revoked device)."""

    def __init__(self, message: str, *, clash: str | None = None) -> None:
        super().__init__(message)
        self.clash = clash
        """``name`` or ``chip`` when a registration clashed with an active device's name or chip id."""


class NotFound(InputError, LookupError):
    """No such home, device or provisioning id."""


async def setup_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", schema="pg_catalog", encoder=json.dumps, decoder=json.loads, format="text")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """No reset when a connection goes back to the pool: nothing here sets session state (no SET, LISTEN or
    session-level lock), and the reset query is a round trip per use (a fifth of a first-online burst)."""


async def create_pool(dsn: str, *, size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(dsn, min_size=1, max_size=size, init=setup_connection, reset=_keep_session,
                                     timeout=10)


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply the migration files not yet applied; return their versions."""
    return await migrations.migrate(
        conn, migrations.load_migrations(MIGRATIONS), table="provisioner_schema_migrations", lock=MIGRATION_LOCK
    )


class Store:
    """Queries of the registry; each public method is one transaction unless given a connection."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # -- homes ---------------------------------------------------------------
    async def put_home(self, home_id: str, tz: str) -> None:
        await self.pool.execute(
            "INSERT INTO provisioner_homes (home_id, tz) VALUES ($1, $2) ON CONFLICT (home_id) DO UPDATE SET tz = $2",
            home_id, tz,
        )

    async def ensure_home(self, home_id: str, tz: str) -> None:
        await self.pool.execute(
            "INSERT INTO provisioner_homes (home_id, tz) VALUES ($1, $2) ON CONFLICT (home_id) DO NOTHING", home_id, tz
        )

    async def home_tz(self, home_id: str, conn: asyncpg.Connection | None = None) -> str:
        tz = await (conn or self.pool).fetchval("SELECT tz FROM provisioner_homes WHERE home_id = $1", home_id)
        if tz is None:
            raise NotFound(f"unknown home {home_id!r}: create it first (`nodefleet device home {home_id} --tz Zone`)")
        return tz

    async def lock_home_login(self, conn: asyncpg.Connection, home_id: str) -> str | None:
        """The home's operator login (None: it has none), its row held until commit: whoever changes who the
        login reaches (a login made, a node joining or leaving) takes turns, across instances too.  NO KEY: a
        device inserted into the home meanwhile (its foreign key takes a key-share lock) does not wait."""
        row = await conn.fetchrow(
            "SELECT login_username FROM provisioner_homes WHERE home_id = $1 FOR NO KEY UPDATE", home_id)
        if row is None:
            raise NotFound(f"unknown home {home_id!r}: create it first (`nodefleet device home {home_id} --tz Zone`)")
        return row["login_username"]

    async def set_home_login(self, conn: asyncpg.Connection, home_id: str, username: str) -> None:
        await conn.execute("UPDATE provisioner_homes SET login_username = $2 WHERE home_id = $1", home_id, username)

    async def home_nodes(self, conn: asyncpg.Connection, home_id: str) -> list[str]:
        """The home's nodes that are not revoked (pending ones too: they may come online any time)."""
        rows = await conn.fetch("SELECT node FROM provisioner_devices WHERE home_id = $1 AND status <> 'revoked'"
                                " ORDER BY node", home_id)
        return [row["node"] for row in rows]

    # -- devices -------------------------------------------------------------
    async def insert_device(self, *, node: str, home_id: str, device_name: str, provisioning_id: str,
                            chip_id: str | None, expires: datetime, username: str, credential_hash: str,
                            config: dict[str, Any], max_per_home: int) -> None:
        """Insert a pending device (one statement, home limit included); Conflict on a taken name or chip id."""
        try:
            result = await self.pool.execute(
                "INSERT INTO provisioner_devices (node, home_id, device_name, provisioning_id, chip_id, status, expires,"
                " username, credential_hash, config) SELECT $1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9"
                " WHERE (SELECT count(*) FROM provisioner_devices WHERE home_id = $2 AND status <> 'revoked') < $10",
                node, home_id, device_name, provisioning_id, chip_id, expires, username, credential_hash, config,
                max_per_home,
            )
        except asyncpg.UniqueViolationError as exc:
            clash = {"provisioner_devices_active_name": "name",
                     "provisioner_devices_active_chip": "chip"}.get(exc.constraint_name or "")
            what = {
                "name": f"a device named {device_name!r} already exists in home {home_id!r}: "
                        f"choose another name or remove that device first",
                "chip": f"chip {chip_id!r} is already registered: remove its device first",
            }.get(clash or "", f"registration clashes with an existing one ({exc.constraint_name})")
            raise Conflict(what, clash=clash) from exc
        if result.endswith(" 0"):
            raise Conflict(f"home {home_id!r} already has {max_per_home} devices (the limit): remove some first")

    async def replaceable(self, home_id: str, device_name: str, chip_id: str | None) -> str | None:
        """The registration a new one of the same device replaces: a pending one (a retry after a failed
        attempt) or one whose node un-provisioned itself, with the same home and name and no contradicting chip
        (either side a placeholder, or the same chip), or with the same real chip under any name.  None if there
        is none: a provisioned device, or one bound to another real chip, is never replaced."""
        return await self.pool.fetchval(
            "SELECT node FROM provisioner_devices WHERE status IN ('pending', 'unprovisioned') AND ("
            " (home_id = $1 AND lower(device_name) = lower($2) AND ($3::text IS NULL OR chip_id IS NULL OR chip_id = $3))"
            " OR ($3::text IS NOT NULL AND chip_id = $3)) ORDER BY created DESC LIMIT 1",
            home_id, device_name, chip_id)

    async def discard_pending(self, node: str) -> None:
        """Forget a registration whose broker credentials could not be created."""
        await self.pool.execute("DELETE FROM provisioner_devices WHERE node = $1 AND status = 'pending'", node)

    async def device(self, node: str, conn: asyncpg.Connection | None = None, *, for_update: bool = False
                     ) -> asyncpg.Record:
        """One device; ``for_update`` (inside a transaction) holds its row until commit, so instances take turns."""
        lock = " FOR UPDATE" if for_update else ""
        row = await (conn or self.pool).fetchrow(
            f"SELECT {_DEVICE_COLUMNS} FROM provisioner_devices WHERE node = $1{lock}", node)
        if row is None:
            raise NotFound(f"no device {node!r}: list them with `nodefleet device list`")
        return row

    async def by_provisioning_id(self, provisioning_id: str) -> asyncpg.Record:
        row = await self.pool.fetchrow(
            f"SELECT {_DEVICE_COLUMNS} FROM provisioner_devices WHERE provisioning_id = $1", provisioning_id)
        if row is None:
            raise NotFound(f"no registration {provisioning_id!r}: register the device again")
        return row

    async def mark_provisioned(self, node: str, chip_id: str, caps: list[str]) -> asyncpg.Record | None:
        """Pending (or unprovisioned) -> provisioned with its chip id bound, in one statement (bursts of first
        onlines).

        Returns the device, or None when it is not a pending device registered to this chip (or to no chip):
        the caller then reads the row to say why.  Raises Conflict when another active device holds the chip
        id (the chip was registered again without removing its old registration).
        """
        try:
            return await self.pool.fetchrow(
                "UPDATE provisioner_devices SET status = 'provisioned', chip_id = $2, caps = $3, expires = NULL,"
                " first_connected = now(), last_seen = now(), refused_code = NULL, refused_chip = NULL,"
                " refused_reason = NULL"
                " WHERE node = $1 AND status IN ('pending', 'unprovisioned') AND (chip_id IS NULL OR chip_id = $2)"
                f" RETURNING {_DEVICE_COLUMNS}",
                node, chip_id, caps,
            )
        except asyncpg.UniqueViolationError as exc:
            holder = await self.chip_holder(chip_id)
            raise Conflict(f"chip {chip_id} is already bound to {holder}: run `nodefleet device remove {holder}` "
                           f"to move the chip to {node}", clash="chip") from exc

    async def chip_holder(self, chip_id: str) -> str | None:
        """The active device the chip is bound to."""
        return await self.pool.fetchval(
            "SELECT node FROM provisioner_devices WHERE chip_id = $1 AND status <> 'revoked'", chip_id)

    async def set_refused(self, node: str, code: str, chip_id: str, reason: str) -> None:
        """Remember why a pending device's online was refused, for its status."""
        await self.pool.execute(
            "UPDATE provisioner_devices SET refused_code = $2, refused_chip = $3, refused_reason = $4"
            " WHERE node = $1 AND status IN ('pending', 'unprovisioned')", node, code, chip_id, reason)

    async def unprovision(self, node: str) -> bool:
        """Provisioned -> unprovisioned (the node said so); False if it was not provisioned."""
        result = await self.pool.execute(
            "UPDATE provisioner_devices SET status = 'unprovisioned' WHERE node = $1 AND status = 'provisioned'", node)
        return result.endswith(" 1")

    async def touch(self, node: str, caps: list[str] | None = None) -> None:
        if caps is None:
            await self.pool.execute("UPDATE provisioner_devices SET last_seen = now() WHERE node = $1", node)
        else:
            await self.pool.execute("UPDATE provisioner_devices SET last_seen = now(), caps = $2 WHERE node = $1",
                                    node, caps)

    async def set_config(self, conn: asyncpg.Connection, node: str, config: dict[str, Any], version: int) -> None:
        await conn.execute("UPDATE provisioner_devices SET config = $2, config_version = $3 WHERE node = $1",
                           node, config, version)

    async def set_config_applied(self, node: str, version: int) -> bool:
        """Record the config version the node reports; False if unchanged, unknown or revoked."""
        result = await self.pool.execute(
            "UPDATE provisioner_devices SET config_applied = $2 WHERE node = $1 AND status <> 'revoked'"
            " AND config_applied IS DISTINCT FROM $2", node, version)
        return result.endswith(" 1")

    async def revoke(self, conn: asyncpg.Connection, node: str) -> None:
        await conn.execute("UPDATE provisioner_devices SET status = 'revoked', expires = NULL WHERE node = $1", node)

    async def expired(self) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT node FROM provisioner_devices WHERE status = 'pending' AND expires < now() ORDER BY expires LIMIT 500")
        return [r["node"] for r in rows]

    async def active_nodes(self) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            f"SELECT {_DEVICE_COLUMNS} FROM provisioner_devices WHERE status <> 'revoked'")

    async def list(self, *, home_id: str | None, status: str | None) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            f"SELECT {_DEVICE_COLUMNS} FROM provisioner_devices WHERE ($1::text IS NULL OR home_id = $1)"
            " AND ($2::text IS NULL OR status = $2) ORDER BY home_id, node LIMIT 10000",
            home_id, status,
        )

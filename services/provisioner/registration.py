"""Registering a device (its row, then its broker credentials), its provisioning status, homes and the device list.

A registration writes its row, then the broker's credentials (the node's own,
then its home's operator login's rights), and takes the row back if the broker
refuses.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from nodefleet.contracts import Config, Topics
from nodefleet.contracts.ota import device_key
from nodefleet.contracts.provisioning import (
    DeviceRow,
    ListRequest,
    MqttConfig,
    ProvisioningStatus,
    RegisterRequest,
    Registration,
    is_temporary_chip,
)
from nodefleet.logging import get_logger

from . import tz
from .credentials import CredentialError, Credentials
from .home_logins import HomeLogins
from .removal import Removal
from .store import Conflict, Store

log = get_logger(__name__)


def slug(device_name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")[:40].strip("-")
    return f"{base or 'node'}-{secrets.token_hex(3)}"


def credential_hash(password: str) -> str:
    # The password is 144 random bits, so one salted SHA-256 is enough to keep it out of a dump.
    salt = secrets.token_hex(8)
    return f"sha256${salt}${hashlib.sha256((salt + password).encode()).hexdigest()}"


@dataclass(frozen=True, slots=True)
class NodeBroker:
    """Where a registration tells its node the broker is."""

    host: str
    port: int
    ca: str | None = None
    """The broker's authority as the node takes it (base64 DER, nodefleet.tls.ca_der_base64): TLS; None: plain."""


class Registrations:
    def __init__(self, *, store: Store, credentials: Credentials, topics: Topics, removal: Removal,
                 broker: NodeBroker, pending_ttl: float, max_devices_per_home: int, home_logins: HomeLogins,
                 ota_master: bytes | None = None) -> None:
        self.store = store
        self.home_logins = home_logins
        self.credentials = credentials
        self.topics = topics
        self.removal = removal
        self.broker = broker
        self.pending_ttl = pending_ttl
        self.max_devices_per_home = max_devices_per_home
        self.ota_master = ota_master

    def ota_key(self, node: str) -> str | None:
        """The node's OTA key (``MqttConfig.ota_key``); None without a master key: the node takes no updates."""
        return device_key(self.ota_master, node).hex() if self.ota_master is not None else None

    async def put_home(self, home_id: str, zone: str) -> None:
        tz.zone(zone)
        await self.store.put_home(home_id, zone)

    async def register(self, request: RegisterRequest) -> Registration:
        node = slug(request.device_name)
        password = secrets.token_urlsafe(18)
        provisioning_id = secrets.token_hex(16)
        expires = datetime.now(UTC) + timedelta(seconds=self.pending_ttl)
        zone = await self.store.home_tz(request.home_id)
        config = Config(version=1, tz=tz.offsets(zone, now=time.time()), tz_name=zone)
        # A placeholder chip id (a phone app's temp_...) is not kept: the first online binds the real one.
        chip_id = None if is_temporary_chip(request.chip_id) else request.chip_id
        row: dict[str, Any] = {
            "node": node, "home_id": request.home_id, "device_name": request.device_name,
            "provisioning_id": provisioning_id, "chip_id": chip_id, "expires": expires, "username": node,
            "credential_hash": credential_hash(password), "config": config.model_dump(mode="json", by_alias=True),
            "max_per_home": self.max_devices_per_home,
        }
        try:
            await self.store.insert_device(**row)
        except Conflict as exc:
            # The same device registered again (a failed attempt retried, or after it un-provisioned itself): its
            # old registration gives way.
            old = await self.store.replaceable(request.home_id, request.device_name, chip_id) \
                if exc.clash else None
            if old is None:
                raise
            await self.removal.remove(old, reason=f"replaced by a new registration ({node})")
            await self.store.insert_device(**row)
        # The row first (it claims the name and chip id), then the broker: no database connection is held while
        # the broker works.  If the broker refuses, the row goes too; if this process dies in between, the
        # pending row expires like any unclaimed registration.  The home's operator login, if it has one, is
        # given the node last; if that fails, the node's own login goes too.
        try:
            await self.credentials.add(node, password, publish=self.topics.node_outbox(node),
                                       subscribe=self.topics.node_inbox(node))
            try:
                await self.home_logins.joined(node, request.home_id)
            except Exception:
                with contextlib.suppress(CredentialError):
                    await self.credentials.remove(node)
                raise
        except Exception:
            await self.store.discard_pending(node)
            raise
        log.info("registered", node=node, home=request.home_id, provisioning_id=provisioning_id)
        return Registration(
            provisioning_id=provisioning_id, expires_at=expires,
            mqtt_config=MqttConfig(broker_host=self.broker.host, broker_port=self.broker.port,
                                   topic_prefix=self.topics.prefix(node), node_name=node, username=node,
                                   password=password, ota_key=self.ota_key(node), broker_ca=self.broker.ca),
        )

    async def status(self, provisioning_id: str) -> ProvisioningStatus:
        row = await self.store.by_provisioning_id(provisioning_id)
        refused = row["refused_code"] if row["status"] in ("pending", "unprovisioned") else None
        return ProvisioningStatus(provisioning_id=provisioning_id, is_provisioned=row["status"] == "provisioned",
                                  device_id=row["node"], status=refused or row["status"],
                                  connected_at=row["first_connected"], config_version=row["config_version"],
                                  config_applied=row["config_applied"], chip_id=row["chip_id"],
                                  reported_chip_id=row["refused_chip"] if refused else None,
                                  error=row["refused_reason"] if refused else None)

    async def list(self, request: ListRequest) -> list[DeviceRow]:
        rows = await self.store.list(home_id=request.home_id, status=request.status)
        return [DeviceRow(**{k: row[k] for k in DeviceRow.model_fields}) for row in rows]

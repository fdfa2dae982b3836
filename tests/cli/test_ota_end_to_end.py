"""OTA through the whole system, as a user drives it: ``nodefleet up --demo N`` (broker, PostgreSQL, every service,
N real MicroPython demo nodes that got their keys at registration), then ``nodefleet ota build`` of a firmware copy,
``ota release``, ``ota rollout start``, ``ota status`` (plain, not a terminal), ``ota history`` and
``nodefleet devices``, each command a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nodefleet.contracts import Topics
from nodefleet.embedded.dynsec import mosquitto_dynsec_config
from nodefleet.embedded.mosquitto import Mosquitto, free_port
from nodefleet.embedded.postgres import EmbeddedPostgres
from nodefleet.sim import FIRMWARE_DIR
from nodefleet.wire import BrokerAddress, Client

from .helpers import UpProcess, children_of, cli_env, nodefleet, operator_url, postmaster_pid, process_alive

pytestmark = pytest.mark.timeout(240)

OLD = "0.1.0"
"""The version the demo nodes run (``firmware/app.py``)."""
ENDED = ("done", "halted", "aborted")


# -- releases: `nodefleet ota build` of a modified copy of the firmware ----------------------------------------------

async def build_release(tmp_path: Path, version: str, *, self_test: str | None = None, filler: int = 0) -> Path:
    """A copy of the firmware with ``version`` in ``app.FW``, built with ``nodefleet ota build --target unix``.

    ``self_test``: a reason the copy's self-test returns (it fails); ``filler``: about that many bytes more in one
    module, so a download lasts long enough to be interrupted.
    """
    src = tmp_path / f"firmware-{version}"
    shutil.copytree(FIRMWARE_DIR, src, ignore=shutil.ignore_patterns("__pycache__", "build"))
    app = src / "app.py"
    assert f'FW = "{OLD}"' in app.read_text()
    app.write_text(app.read_text().replace(f'FW = "{OLD}"', f'FW = "{version}"'))
    if self_test is not None:
        (src / "selftest.py").write_text(f"def run(app):\n    return {self_test!r}\n")
    if filler:
        rng = random.Random(12)  # mpy-cross takes strings of a few KB, not one of a megabyte
        parts = [rng.randbytes(1536).hex() for _ in range(filler // 3072)]
        (src / "filler.py").write_text("DATA = (\n" + "".join(f'    "{p}",\n' for p in parts) + ")\n")
    out = tmp_path / f"nodefleet-{version}.nfr"
    done = await nodefleet("ota", "build", str(src), "--version", version, "--target", "unix", "-o", str(out),
                           env=cli_env(), timeout=120)
    assert done.code == 0, done.stderr
    assert f"release {version}:" in done.stdout and out.exists()
    return out


# -- the system: `nodefleet up --demo N` and the commands against it ------------------------------------------------

@dataclass
class System:
    """One ``nodefleet up`` and how the commands reach it (``broker``: the URL they get with ``--broker``)."""

    up: UpProcess
    data_dir: Path
    topics: Topics
    broker: str
    operator: str
    env: dict[str, str]
    seen: set[int] = field(default_factory=set)

    async def run(self, *args: str, timeout: float = 30.0) -> str:
        done = await nodefleet(*args, "--broker", self.broker, env=self.env, timeout=timeout)
        assert done.code == 0, f"nodefleet {' '.join(args)}: {done.stderr[-2000:]}"
        return done.stdout

    def remember_children(self) -> None:
        """Note the processes under ``up`` (PostgreSQL, the demo nodes), to end any it leaves behind."""
        pending = [self.up.pid]
        while pending:
            for child in children_of(pending.pop()):
                self.seen.add(child)
                pending.append(child)

    async def devices(self) -> dict[str, dict]:
        return {row["node"]: row for row in json.loads(await self.run("devices", "--format", "json"))}

    async def demo_nodes(self, count: int, *, timeout: float = 60.0) -> list[str]:
        """The names of the ``count`` demo nodes once all are online and provisioned."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            rows = await self.devices()
            online = sorted(n for n, row in rows.items() if n.startswith("demo-") and row["online"] and row["fw"])
            if len(online) == count:
                self.remember_children()
                return online
            assert loop.time() < deadline, f"{len(online)} of {count} demo nodes online: {rows}"
            await asyncio.sleep(0.5)

    async def status(self, rollout: str) -> tuple[str, dict[str, str]]:
        """``nodefleet ota status ROLLOUT`` as printed: the rollout's state and each node's."""
        out = await self.run("ota", "status", rollout)
        head = re.match(rf"rollout {re.escape(rollout)}\s+release \S+\s+(\w+)\s", out)
        assert head, out
        nodes = {}
        for line in out.splitlines():
            words = line.replace("│", " ").split()
            if len(words) >= 3 and words[0].startswith("demo-"):
                nodes[words[0]] = words[2]
        return head.group(1), nodes

    async def until_ended(self, rollout: str, *, timeout: float) -> tuple[str, dict[str, str], list[str]]:
        """Poll the status until the rollout ends; its last state, the nodes' states, and the states it went through."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen: list[str] = []
        while True:
            state, nodes = await self.status(rollout)
            if not seen or seen[-1] != state:
                seen.append(state)
            if state in ENDED:
                return state, nodes, seen
            assert loop.time() < deadline, f"rollout {rollout} still {state} after {timeout} s: {nodes}"
            await asyncio.sleep(1.0)

    async def history(self, node: str) -> list[dict]:
        """``nodefleet ota history NODE``, oldest first."""
        return list(reversed(json.loads(await self.run("ota", "history", node, "--format", "json"))))


def up_env(topics: Topics, **extra: str) -> dict[str, str]:
    return cli_env(topics, NODEFLEET_TELEMETRY_CLIENT_ID=f"telemetry-{uuid.uuid4().hex[:8]}", **extra)


@contextlib.asynccontextmanager
async def system(tmp_path: Path, topics: Topics, demo: int, *, broker: Mosquitto | None = None,
                 env: dict[str, str] | None = None, data_dir: Path | None = None):
    """``nodefleet up --demo N`` on its own ports and data directory (or ``broker``, a Mosquitto with dynamic
    security); at the end stopped, and whatever it left running ended by pid."""
    data_dir = data_dir or Path(_own_dir()) / "data"
    started: list[System] = []

    async def launch() -> System:
        up_args = ["--db-port", str(free_port()), "--demo", str(demo), "--log-format", "json"]
        if broker is None:
            port = free_port()
            up_args += ["--mqtt-port", str(port)]
        else:
            up_args += ["--broker", admin_url(broker)]
        up = UpProcess([*up_args, "--data-dir", str(data_dir)], env=env or up_env(topics), workdir=tmp_path / "logs")
        started.append(found := System(up=up, data_dir=data_dir, topics=topics, broker="", operator="",
                                       env=cli_env(topics, data_dir=data_dir)))
        await up.wait_ready(timeout=90)
        if broker is None:
            found.broker = f"mqtt://127.0.0.1:{port}"
            found.operator = operator_url(data_dir, port)
        else:
            found.broker = found.operator = admin_url(broker)
        found.remember_children()
        return found

    try:
        yield launch
    finally:
        for each in started:
            if each.up.process.poll() is None:
                each.remember_children()
                with contextlib.suppress(AssertionError):
                    await each.up.stop(signal.SIGTERM, timeout=30)
            each.up.kill()
            for pid in each.seen:  # only processes this test's `up` started
                if process_alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        pid = postmaster_pid(data_dir)
        if pid is not None and process_alive(pid):
            EmbeddedPostgres(data_dir / "postgres", port=0).stop("immediate")
        shutil.rmtree(data_dir.parent, ignore_errors=True)


def _own_dir() -> str:
    # Not under pytest's tmp_path: pytest resets its base to mode 0700 when a run starts (PostgreSQL's own user).
    import tempfile

    return tempfile.mkdtemp(prefix="nodefleet-ota-e2e-")


DYNSEC_ADMIN = ("provisioner", "provisioner-e2e-pw")


def admin_url(broker: Mosquitto) -> str:
    return f"mqtt://{DYNSEC_ADMIN[0]}:{DYNSEC_ADMIN[1]}@{broker.host}:{broker.port}"


# -- what goes over the wire: a subscriber logged in as the operator ------------------------------------------------

class Tap:
    """Counts the frames the ota service publishes (shared stream, repairs) and keeps the nodes' progress."""

    def __init__(self, url: str, topics: Topics) -> None:
        self.url, self.topics = url, topics
        self.shared = self.repair = 0  # bytes
        self.units: dict[tuple[str, int, int], int] = {}  # (topic, kind, index) -> times sent
        self.progress: list[dict] = []
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        async with Client(BrokerAddress.parse(self.url), client_id=f"tap-{uuid.uuid4().hex[:6]}") as client:
            await client.subscribe(self.topics.ota_streams(), qos=0)
            await client.subscribe(f"{self.topics.root}/+/ota/data", qos=0)  # noqa: topic-literal (test)
            await client.subscribe(f"{self.topics.root}/+/ota/progress", qos=1)  # noqa: topic-literal (test)
            self.subscribed.set()
            async for message in client.messages:
                topic, payload = str(message.topic), bytes(message.payload)
                if topic.endswith("/progress"):
                    self.progress.append({"node": topic.split("/")[-3], **json.loads(payload)})
                    continue
                if topic.startswith(self.topics.fleet):
                    self.shared += len(payload)
                else:
                    self.repair += len(payload)
                key = (topic, payload[3], int.from_bytes(payload[4:8], "big"))
                self.units[key] = self.units.get(key, 0) + 1

    def frames(self) -> int:
        return sum(self.units.values())


@contextlib.asynccontextmanager
async def tapped(url: str, topics: Topics):
    tap = Tap(url, topics)
    task = asyncio.create_task(tap.run())
    waiter = asyncio.create_task(tap.subscribed.wait())
    await asyncio.wait({task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    try:
        yield tap
    finally:
        task.cancel()
        waiter.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)


def transitions(rows: list[dict]) -> list[str]:
    return [row["state"] for row in rows]


# -- the cases -------------------------------------------------------------------------------------------------------

async def test_one_node_updates_on_the_embedded_broker(tmp_path: Path, topics: Topics) -> None:
    release = await build_release(tmp_path, "0.2.0")
    async with system(tmp_path, topics, demo=1) as launch:
        fleet = await launch()
        [node] = await fleet.demo_nodes(1)
        assert (await fleet.devices())[node]["fw"] == OLD
        out = await fleet.run("ota", "release", str(release))
        assert "release 0.2.0 kept" in out
        out = await fleet.run("ota", "rollout", "start", "0.2.0", "--to", "all", "--canary", "0", "--id", "one")
        assert "rollout one of 0.2.0: 1 nodes" in out
        state, nodes, _ = await fleet.until_ended("one", timeout=60)
        assert (state, nodes) == ("done", {node: "updated"})
        assert transitions(await fleet.history(node)) == \
            ["queued", "downloading", "downloaded", "verified", "updating", "updated"]
        rows = await fleet.devices()
        assert rows[node]["fw"] == "0.2.0" and rows[node]["online"]

"""OTA through the whole system, as a user drives it: ``nodefleet up --demo N`` (broker, PostgreSQL, every service,
N real MicroPython demo nodes that got their keys at registration), then ``nodefleet ota build`` of a firmware copy,
``ota release``, ``ota rollout start``, ``ota status`` (plain, not a terminal), ``ota history`` and
``nodefleet devices``, each command a subprocess."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import wait_for

from nodefleet.contracts import Topics
from nodefleet.contracts.ota import table_chunks
from nodefleet.embedded.dynsec import mosquitto_dynsec_config
from nodefleet.embedded.mosquitto import Mosquitto, free_port
from nodefleet.embedded.postgres import EmbeddedPostgres
from nodefleet.errors import BrokerUnavailable
from nodefleet.sim import FIRMWARE_DIR
from nodefleet.wire import BrokerAddress, Client

from .helpers import (
    UpProcess,
    children_of,
    cli_env,
    nodefleet,
    operator_url,
    postmaster_pid,
    process_alive,
)

pytestmark = pytest.mark.timeout(240)

OLD = "0.1.0"
"""The version the demo nodes run (``firmware/app.py``)."""
ENDED = ("done", "halted", "aborted")


# -- releases: `nodefleet ota build` of a modified copy of the firmware ----------------------------------------------

async def build_release(tmp_path: Path, version: str, *, self_test: str | None = None, filler: int = 0,
                        block_size: int = 4096) -> Path:
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
                           "--block-size", str(block_size), env=cli_env(), timeout=120)
    assert done.code == 0, done.stderr
    assert f"release {version}:" in done.stdout and out.exists()
    return out


# -- the system: `nodefleet up --demo N` and the commands against it ------------------------------------------------

@dataclass
class Status:
    """What ``nodefleet ota status ROLLOUT`` printed: state, stage N of M, and per node (stage, state)."""

    state: str
    stage: int
    stages: int
    nodes: dict[str, tuple[int, str]]

    def states(self) -> dict[str, str]:
        return {node: state for node, (_, state) in self.nodes.items()}


@dataclass
class System:
    """One ``nodefleet up`` and how the commands reach it (``broker``: the URL they get with ``--broker``)."""

    up: UpProcess
    data_dir: Path
    topics: Topics
    broker: str
    operator: str
    env: dict[str, str]
    seen: dict[int, str] = field(default_factory=dict)  # pid -> its start time, so a reused pid is never hit

    async def run(self, *args: str, timeout: float = 30.0) -> str:
        done = await nodefleet(*args, "--broker", self.broker, env=self.env, timeout=timeout)
        assert done.code == 0, f"nodefleet {' '.join(args)}: {done.stderr[-2000:]}"
        return done.stdout

    def remember_children(self) -> None:
        """Note the processes under ``up`` (PostgreSQL, the demo nodes), to end any it leaves behind."""
        pending = [self.up.pid]
        while pending:
            for child in children_of(pending.pop()):
                if (started := start_time(child)) is not None:
                    self.seen.setdefault(child, started)
                pending.append(child)

    def end_leftovers(self) -> None:
        """SIGKILL what is still running of the processes noted, the very ones (pid and start time)."""
        for pid, started in self.seen.items():
            if process_alive(pid) and start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

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

    async def status(self, rollout: str) -> Status:
        """``nodefleet ota status ROLLOUT`` as printed: the rollout's state and stage, each node's stage and state."""
        out = await self.run("ota", "status", rollout)
        head = re.match(rf"rollout {re.escape(rollout)}\s+release \S+\s+(\w+)\s+\d+%\s+stage (\d+)/(\d+)", out)
        assert head, out
        nodes = {}
        for line in out.splitlines():
            words = line.replace("│", " ").split()
            if len(words) >= 3 and words[0].startswith("demo-"):
                nodes[words[0]] = (int(words[1]), words[2])
        return Status(head.group(1), int(head.group(2)), int(head.group(3)), nodes)

    async def until_ended(self, rollout: str, *, timeout: float) -> tuple[Status, list[tuple[str, int]]]:
        """Poll the status until the rollout ends: its last status and the (state, stage) it went through."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen: list[tuple[str, int]] = []
        while True:
            status = await self.status(rollout)
            if not seen or seen[-1] != (status.state, status.stage):
                seen.append((status.state, status.stage))
            if status.state in ENDED:
                return status, seen
            assert loop.time() < deadline, f"rollout {rollout} still {status.state} after {timeout} s: {status}"
            await asyncio.sleep(1.0)

    async def history(self, node: str) -> list[dict]:
        """``nodefleet ota history NODE``, oldest first."""
        return list(reversed(json.loads(await self.run("ota", "history", node, "--format", "json"))))


def start_time(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot, /proc), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def up_env(topics: Topics, **extra: str) -> dict[str, str]:
    return cli_env(topics, NODEFLEET_TELEMETRY_CLIENT_ID=f"telemetry-{uuid.uuid4().hex[:8]}", **extra)


@contextlib.asynccontextmanager
async def system(tmp_path: Path, topics: Topics, demo: int, *, broker: Mosquitto | None = None,
                 env: dict[str, str] | None = None):
    """Launches ``nodefleet up --demo N`` on its own ports and data directory (``broker``: a Mosquitto with
    dynamic security instead of the embedded broker), again on the same ones at each call; at the end each is
    stopped, and whatever it left running ended by pid."""
    data_dir = Path(_own_dir()) / "data"
    started: list[System] = []
    port, db_port = free_port(), free_port()  # the same at each launch, as a restarted `up` keeps its ports

    async def launch() -> System:
        up_args = ["--db-port", str(db_port), "--demo", str(demo), "--log-format", "json"]
        if broker is None:
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
            found.broker = found.operator = operator_on(broker)
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
            each.end_leftovers()  # only processes this test's `up` started
        pid = postmaster_pid(data_dir)
        if pid is not None and process_alive(pid):
            EmbeddedPostgres(data_dir / "postgres", port=0).stop("immediate")
        shutil.rmtree(data_dir.parent, ignore_errors=True)


def _own_dir() -> str:
    # Not under pytest's tmp_path: pytest resets its base to mode 0700 when a run starts (PostgreSQL's own user).
    return tempfile.mkdtemp(prefix="nodefleet-ota-e2e-")


DYNSEC_ADMIN = ("provisioner", "provisioner-e2e-pw")
OPERATOR_PASSWORD = "operator-e2e-pw"


def admin_url(broker: Mosquitto) -> str:
    return f"mqtt://{DYNSEC_ADMIN[0]}:{DYNSEC_ADMIN[1]}@{broker.host}:{broker.port}"


def operator_on(broker: Mosquitto) -> str:
    return f"mqtt://operator:{OPERATOR_PASSWORD}@{broker.host}:{broker.port}"


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
        # Connected as soon as the broker listens: a `nodefleet up` may still be starting.
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            try:
                async with Client(BrokerAddress.parse(self.url), client_id=f"tap-{uuid.uuid4().hex[:6]}") as client:
                    await self._read(client)
            except BrokerUnavailable:
                if self.subscribed.is_set() or asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def _read(self, client: Client) -> None:
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
async def tapped(url: str, topics: Topics, *, wait: bool = True):
    """A running Tap; ``wait=False``: not waiting for it to subscribe (the broker is not up yet)."""
    tap = Tap(url, topics)
    task = asyncio.create_task(tap.run())
    waiter = asyncio.create_task(tap.subscribed.wait())
    if wait:
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


UPDATE = ["queued", "downloading", "downloaded", "verified", "updating", "updated"]


def in_order(rows: list[dict], end: str = "updated") -> bool:
    """The history went forward through an update's states to ``end``.

    A node keeps only its newest progress waiting to be sent (docs/ota.md), so on a busy machine a state it
    passed quickly (``downloaded`` just before ``verified``) may never reach the service: skipped, never
    reordered.
    """
    states = transitions(rows)
    order = UPDATE[:-1] + [end]
    return states[0] == "queued" and states[-1] == end and "verified" in states and \
        [order.index(s) for s in states] == sorted({order.index(s) for s in states})


# -- the cases -------------------------------------------------------------------------------------------------------

async def update_one_node(fleet: System, release: Path) -> None:
    """Case 1 and 2: one demo node from 0.1.0 to 0.2.0, every step through the CLI."""
    [node] = await fleet.demo_nodes(1)
    assert (await fleet.devices())[node]["fw"] == OLD
    out = await fleet.run("ota", "release", str(release))
    assert "release 0.2.0 kept" in out
    out = await fleet.run("ota", "rollout", "start", "0.2.0", "--to", "all", "--canary", "0", "--id", "one")
    assert "rollout one of 0.2.0: 1 nodes" in out
    status, _ = await fleet.until_ended("one", timeout=60)
    assert (status.state, status.states()) == ("done", {node: "updated"})
    history = await fleet.history(node)
    assert in_order(history), transitions(history)

    async def reports_new_version() -> bool:
        row = (await fleet.devices())[node]
        return row["fw"] == "0.2.0" and row["online"]
    await wait_for(reports_new_version, timeout=15, interval=0.5)


async def test_one_node_updates_on_the_embedded_broker(tmp_path: Path, topics: Topics) -> None:
    release = await build_release(tmp_path, "0.2.0")
    async with system(tmp_path, topics, demo=1) as launch:
        await update_one_node(await launch(), release)


async def test_one_node_updates_on_mosquitto(tmp_path: Path, topics: Topics) -> None:
    """``nodefleet up --broker`` on a Mosquitto with its dynamic-security plugin: the demo nodes log in as
    themselves (users the provisioner made), the commands as the operator."""
    release = await build_release(tmp_path, "0.2.0")
    folder = Path(_own_dir())  # Mosquitto started as root runs as its own user: not under tmp_path (0700)
    config = mosquitto_dynsec_config(folder, admin=DYNSEC_ADMIN[0], password=DYNSEC_ADMIN[1],
                                     services={"operator": OPERATOR_PASSWORD})
    try:
        with Mosquitto(extra_config=config) as broker:
            env = up_env(topics, NODEFLEET_PROVISIONER_CREDENTIALS="dynsec")
            async with system(tmp_path, topics, demo=1, broker=broker, env=env) as launch:
                await update_one_node(await launch(), release)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def began(rows: list[dict]) -> float:
    """When the node first reported on its offer (the service's time, epoch seconds)."""
    return min(row["ts"] for row in rows if row["state"] != "queued")


def ended(rows: list[dict]) -> float:
    return max(row["ts"] for row in rows if row["state"] == "updated")


async def test_twenty_nodes_in_one_staged_rollout(tmp_path: Path, topics: Topics) -> None:
    release = await build_release(tmp_path, "0.2.0")
    size = json.loads((await nodefleet("ota", "inspect", str(release), "--json", env=cli_env())).stdout)["size"]
    async with system(tmp_path, topics, demo=20) as launch:
        fleet = await launch()
        names = await fleet.demo_nodes(20, timeout=120)
        await fleet.run("ota", "release", str(release))
        async with tapped(fleet.operator, topics) as tap:
            out = await fleet.run("ota", "rollout", "start", "0.2.0", "--to", "all", "--canary", "1",
                                  "--stages", "50%,100%", "--id", "twenty")
            assert "rollout twenty of 0.2.0: 20 nodes in 3 stage(s) (1, 9, 10)" in out
            status, seen = await fleet.until_ended("twenty", timeout=150)
            await asyncio.sleep(0.5)
        assert status.state == "done" and status.stages == 3
        assert status.states() == {name: "updated" for name in names}
        assert [stage for _, stage in seen] == sorted(stage for _, stage in seen)  # forward only
        stages = [sorted(n for n, (stage, _) in status.nodes.items() if stage == k) for k in (0, 1, 2)]  # 0: the canary
        assert [len(s) for s in stages] == [1, 9, 10]
        histories = {}
        for group in (names[i:i + 5] for i in range(0, 20, 5)):
            for name, rows in zip(group, await asyncio.gather(*(fleet.history(n) for n in group))):
                histories[name] = rows
        for name, rows in histories.items():
            assert in_order(rows), (name, transitions(rows))
        # A stage is offered only once the one before it updated (all of it: 10% of 9 nodes is no node).
        for before, after in itertools.pairwise(stages):
            assert max(ended(histories[n]) for n in before) < min(began(histories[n]) for n in after)
        rows = await fleet.devices()
        assert {rows[n]["fw"] for n in names} == {"0.2.0"}
        # The stream is shared: the canary's download went to it alone (its repairs), each later stage's mostly
        # once on fleet/ota/data/<release> for all of its nodes.
        print(json.dumps({"case": "twenty", "image": size, "shared_bytes": tap.shared, "repair_bytes": tap.repair,
                          "per_node": round((tap.shared + tap.repair) / 20), "frames": tap.frames()}))
        assert tap.shared >= 2 * size
        assert tap.shared + tap.repair < 4.5 * size  # 20 separate downloads would be 20 images


async def test_a_failing_self_test_rolls_the_canary_back_and_halts(tmp_path: Path, topics: Topics) -> None:
    release = await build_release(tmp_path, "0.3.0", self_test="fails on purpose")
    async with system(tmp_path, topics, demo=3) as launch:
        fleet = await launch()
        names = await fleet.demo_nodes(3)
        await fleet.run("ota", "release", str(release))
        async with tapped(fleet.operator, topics) as tap:
            await fleet.run("ota", "rollout", "start", "0.3.0", "--to", "all", "--canary", "1", "--id", "bad")
            status, _ = await fleet.until_ended("bad", timeout=90)
            await asyncio.sleep(3)  # were anything offered to the others, they would be downloading by now
        [canary] = [n for n, (stage, _) in status.nodes.items() if stage == 0]
        others = sorted(set(names) - {canary})
        assert status.state == "halted"
        assert status.states() == {canary: "rolled_back", **{n: "queued" for n in others}}
        out = await fleet.run("ota", "status", "bad")
        assert f"the canary {canary} rolled back" in out
        [view] = json.loads(await fleet.run("ota", "status", "bad", "--json"))
        assert {t["node"]: t["offered"] for t in view["targets"]} == {n: False for n in others} | {canary: True}
        history = await fleet.history(canary)
        assert in_order(history, end="rolled_back"), transitions(history)
        assert history[-1]["code"] == "self_test"
        for name in others:
            assert transitions(await fleet.history(name)) == ["queued"]
        # Nobody but the canary said a word about the release; everyone still runs the old firmware.
        assert {p["node"] for p in tap.progress} == {canary}
        rows = await fleet.devices()
        assert {rows[n]["fw"] for n in names} == {OLD} and all(rows[n]["online"] for n in names)


def held_blocks(flash: Path, tables: int) -> set[int]:
    """The image blocks a node's flash holds by its saved bitmap (``ota.json``: table chunks first, then blocks)."""
    try:
        saved = json.loads((flash / "ota.json").read_text())
    except FileNotFoundError:
        return set()
    have = base64.b64decode(saved["have"])
    return {u - tables for u in range(tables, len(have) * 8) if have[u >> 3] & (0x80 >> (u & 7))}


async def test_kill_9_of_up_mid_rollout(tmp_path: Path, topics: Topics) -> None:
    """The ota service runs inside the ``nodefleet up`` process (a task, restarted by its supervisor when it
    raises), so a kill -9 of the service is a kill -9 of ``up``: broker, services and, with it, the demo nodes (a
    power cut; they die with their launcher).  ``up`` started again on the same data directory carries on."""
    # Long enough to be cut half-way: 1 KiB blocks, about 570 frames.
    release = await build_release(tmp_path, "0.4.0", filler=512 * 1024, block_size=1024)
    manifest = json.loads((await nodefleet("ota", "inspect", str(release), "--json", env=cli_env())).stdout)
    size, blocks = manifest["size"], len(manifest["blocks"])
    tables = table_chunks(blocks, 1024)
    async with system(tmp_path, topics, demo=3) as launch:
        fleet = await launch()
        names = await fleet.demo_nodes(3)
        flash = {name: fleet.data_dir / "demo-nodes" / name for name in names}
        await fleet.run("ota", "release", str(release), timeout=60)
        await fleet.run("ota", "rollout", "start", "0.4.0", "--to", "all", "--canary", "0", "--id", "cut")
        # Each node a quarter through, by what it saved on its flash.
        await wait_for(lambda: all(len(held_blocks(flash[n], tables)) >= blocks // 4 for n in names), timeout=60,
                       interval=0.01)
        fleet.remember_children()
        nodes = set(fleet.seen)  # the processes under `up`: its demo nodes (PostgreSQL runs detached)
        os.kill(fleet.up.pid, signal.SIGKILL)
        assert await fleet.up.wait(timeout=10) == -signal.SIGKILL
        await wait_for(lambda: not any(process_alive(pid) for pid in nodes), timeout=10)
        held = {name: held_blocks(flash[name], tables) for name in names}
        assert all(len(h) < blocks for h in held.values()), {n: len(h) for n, h in held.items()}  # none done
        common = set.intersection(*held.values())

        # Listening from the moment the broker is back (same port, same operator login), before any node is.
        async with tapped(fleet.operator, topics, wait=False) as after:
            again = await launch()
            assert after.subscribed.is_set()
            assert await again.demo_nodes(3) == names
            status, _ = await again.until_ended("cut", timeout=90)
            await asyncio.sleep(0.3)
        assert status.state == "done" and status.states() == {name: "updated" for name in names}
        rows = await again.devices()
        assert {rows[n]["fw"] for n in names} == {"0.4.0"}
        for name in names:
            history = await again.history(name)
            assert in_order(history), (name, transitions(history))
        # Each resumed from its flash: after the restart the shared stream and the repairs carried exactly the
        # blocks some node lacked, never one all three held (a node starting over would have needed those again).
        sent_after = {index for _, kind, index in after.units if kind == 2}
        print(json.dumps({"case": "kill-9", "image": size, "blocks": blocks,
                          "held": {n: len(h) for n, h in held.items()}, "blocks_sent_after_restart": len(sent_after),
                          "bytes_after_restart": after.shared + after.repair}))
        assert sent_after == set(range(blocks)) - common
        assert after.shared + after.repair < size  # the image did not go out whole again

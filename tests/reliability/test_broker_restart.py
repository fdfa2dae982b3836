"""The broker restarted under load, Mosquitto (with persistence) and the embedded broker alike.

`nodefleet up --broker` runs the four services against it and a real MicroPython node is online; a publisher
streams numbered telemetry at QoS 1 through the restart, resending what was not acknowledged.  After the
restart every service and the node reconnect and resubscribe by themselves (each answers a request or a
command); the time to full recovery is measured; every telemetry message the broker acknowledged is stored,
none twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from broker_thread import BrokerThread
from cli.helpers import operator_url
from cli.test_cli_up import up_env
from node.conftest import online, watching

from nodefleet.contracts import Topics
from nodefleet.embedded.mosquitto import Mosquitto, free_port
from nodefleet.errors import RequestError
from nodefleet.fleet import replies_to
from nodefleet.up.services import SERVICES
from nodefleet.wire import BrokerAddress, Client, WireError

pytestmark = pytest.mark.timeout(150)
# The load comes from one publisher as one node: telemetry's per-node rate limit (tests/telemetry/test_node_limits.py)
# would drop most of it, and what is measured here is the restart.
NO_NODE_LIMIT = {"NODEFLEET_TELEMETRY_NODE_LIMIT": "0"}
SENDER = "stream-1"
ASK = {"telemetry": ("devices", {}), "provisioner": ("list", {}), "scheduler": ("show", {"node": SENDER}),
       "ota": ("releases", {})}


class Restartable:
    """One broker on one port that can be stopped and started again."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind, self.host, self.port = kind, "127.0.0.1", free_port()
        self._folder = folder
        self._broker: Mosquitto | BrokerThread | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> None:
        if self.kind == "mosquitto":
            self._folder.chmod(0o777)  # Mosquitto started as root writes it as its own user
            persistence = f"persistence true\npersistence_location {self._folder}/\nautosave_interval 1\n"
            self._broker = Mosquitto(port=self.port, extra_config=persistence)
            self._broker.start()
        else:
            self._broker = BrokerThread(port=self.port, sessions_file=self._folder / "sessions.json").start()

    def stop(self) -> None:
        if self._broker is not None:
            self._broker.stop()
            self._broker = None


async def stream(url: str, topics: Topics, acked: list[int], stop: asyncio.Event) -> int:
    """Publish seq 1, 2, ... at QoS 1 until ``stop``; a message counts once the broker acknowledged it."""
    seq, attempts = 1, 0
    while not stop.is_set():
        try:
            async with Client(BrokerAddress.parse(url), client_id=f"pub-{uuid.uuid4().hex[:6]}") as client:
                while not stop.is_set():
                    body = {"v": 1, "seq": seq, "readings": {"temperature": 20.0}}
                    attempts += 1
                    await asyncio.wait_for(client.publish(topics.telemetry(SENDER), json.dumps(body), qos=1), 2)
                    acked.append(seq)
                    seq += 1
                    await asyncio.sleep(0.005)
        except (WireError, TimeoutError):
            await asyncio.sleep(0.1)  # the broker is away: resend the same seq once it is back
    return attempts


async def all_answer(url: str, topics: Topics) -> None:
    """Every service answers one request (each retried until it does)."""
    client_id = f"ask-{uuid.uuid4().hex[:6]}"
    async with (Client(BrokerAddress.parse(url), client_id=client_id) as client,
                replies_to(client, topics, client_id=client_id) as requester):
        for service in SERVICES:
            action, data = ASK[service]
            while True:
                with contextlib.suppress(RequestError):
                    await requester.request(service, action, data, timeout=1.0)
                    break


async def stored_rows(url: str, topics: Topics) -> list[dict]:
    client_id = f"q-{uuid.uuid4().hex[:6]}"
    async with (Client(BrokerAddress.parse(url), client_id=client_id) as client,
                replies_to(client, topics, client_id=client_id) as requester):
        return await requester.request("telemetry", "telemetry", {"node": SENDER, "since": 0}, timeout=10)


@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
async def test_broker_restart_under_load(kind: str, launch_up, data_dir: Path, make_node, topics: Topics):
    # Not under tmp_path: pytest keeps that 0700, and Mosquitto drops to its own user.
    broker = Restartable(kind, Path(tempfile.mkdtemp(prefix="nodefleet-rel-persist-")))
    broker.start()
    try:
        up = launch_up("--broker", broker.url, "--db-port", str(free_port()), data_dir=data_dir,
                       env={**up_env(topics), **NO_NODE_LIMIT})
        await up.wait_ready()
        await all_answer(broker.url, topics)
        node = make_node("node-1", broker=broker, keepalive=2)
        async with online(node, broker, topics):
            pass
        acked: list[int] = []
        stop = asyncio.Event()
        publisher = asyncio.create_task(stream(broker.url, topics, acked, stop))
        await asyncio.sleep(1.0)
        broker.stop()
        down_at = time.monotonic()
        await asyncio.sleep(1.0)
        broker.start()
        up_at = time.monotonic()
        await all_answer(broker.url, topics)
        services_back = time.monotonic() - up_at
        async with watching(broker, topics, "node-1") as watch:
            while True:
                with contextlib.suppress(TimeoutError):
                    ack = await watch.command("switch", {"state": "ON"}, timeout=1.0)
                    break
        node_back = time.monotonic() - up_at
        assert ack["status"] == "ok"
        await asyncio.sleep(1.0)
        stop.set()
        attempts = await publisher
        deadline = time.monotonic() + 15
        while True:  # the service commits in batches
            rows = await stored_rows(broker.url, topics)
            if {row["seq"] for row in rows} >= set(acked) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        seqs = [row["seq"] for row in rows]
        lost = sorted(set(acked) - set(seqs))
        duplicated = len(seqs) - len(set(seqs))
        print(f"{kind} restart: {attempts} publishes, {len(acked)} acknowledged, {len(set(seqs))} stored, lost "
              f"{len(lost)}, duplicated {duplicated}; down {up_at - down_at:.1f} s; services back in "
              f"{services_back:.2f} s, the node in {node_back:.2f} s after the broker listened again")
        assert lost == [] and duplicated == 0, (lost[:20], attempts, len(acked))
        assert up.process.returncode is None
        assert await up.stop(signal.SIGTERM) == 0, up.stderr[-3000:]
    finally:
        broker.stop()


async def test_nodefleet_up_restarted_under_load_loses_nothing_acknowledged(launch_up, data_dir: Path,
                                                                            topics: Topics):
    """`nodefleet up` (embedded broker) stopped while a client streams telemetry, then started again.

    The services stop before the broker; what the broker acknowledged after telemetry left waits in
    telemetry's persistent session, goes to ``<data dir>/sessions.json`` and arrives after the next start.
    """
    mqtt_port, db_port = free_port(), free_port()
    args = ("--mqtt-port", str(mqtt_port), "--db-port", str(db_port), "--http-port", "-1")
    env = {**up_env(topics), **NO_NODE_LIMIT}  # the same telemetry client id both times, as a real `nodefleet up` has
    up = launch_up(*args, data_dir=data_dir, env=env)
    await up.wait_ready()
    url = operator_url(data_dir, mqtt_port)
    acked: list[int] = []
    stop = asyncio.Event()
    publisher = asyncio.create_task(stream(url, topics, acked, stop))
    await asyncio.sleep(1.0)
    assert await up.stop(signal.SIGTERM) == 0, up.stderr[-3000:]
    stop.set()
    attempts = await publisher
    saved = json.loads((data_dir / "sessions.json").read_text())
    pending = sum(len(s["pending"]) for s in saved["sessions"])
    up = launch_up(*args, data_dir=data_dir, env=env)
    await up.wait_ready()
    deadline = time.monotonic() + 15
    while True:
        rows = await stored_rows(url, topics)
        if {row["seq"] for row in rows} >= set(acked) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    seqs = [row["seq"] for row in rows]
    lost, duplicated = sorted(set(acked) - set(seqs)), len(seqs) - len(set(seqs))
    print(f"up restart: {attempts} publishes, {len(acked)} acknowledged, {pending} waited in sessions.json, "
          f"{len(set(seqs))} stored, lost {len(lost)}, duplicated {duplicated}")
    assert lost == [] and duplicated == 0, lost[:20]
    assert not (data_dir / "sessions.json").exists()
    assert await up.stop(signal.SIGTERM) == 0, up.stderr[-3000:]

"""`kill -9` of the provisioner and the scheduler under load, then a restart: nothing accepted lost or doubled.

Each service runs as its own process (``python -m services.<name>``, tests/telemetry/process.py), as in a
container.  Requests caught by the kill either get their answer or the requester's timeout, which says what to
check; a registration retried after a timeout is taken once.  The ota service's own kill -9 mid-rollout is
tests/ota/test_restart.py; telemetry's is tests/telemetry/test_reliability.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import pytest
from provisioner.conftest import ADMIN, SERVICE
from provisioner.helpers import come_online, node_client, watching
from telemetry.process import ServiceProcess

from nodefleet.contracts import Topics
from nodefleet.contracts.provisioning import PROVISIONER_SERVICE
from nodefleet.errors import RequestError
from nodefleet.fleet import replies_to

pytestmark = pytest.mark.timeout(120)


def service_env(broker: Any, database: str, topics: Topics, *, user: tuple[str, str] = SERVICE,
                **extra: str) -> dict[str, str]:
    """What a container of any service gets: the broker (as ``user``), the database, the test's roots."""
    return {"NODEFLEET_MQTT_URL": f"mqtt://{user[0]}:{user[1]}@{broker.host}:{broker.port}",
            "NODEFLEET_DATABASE_URL": database, "NODEFLEET_TOPIC_ROOT": topics.root,
            "NODEFLEET_FLEET_ROOT": topics.fleet, "NODEFLEET_INSTANCE": "kill", **extra}


@contextlib.asynccontextmanager
async def requester(broker: Any, topics: Topics):
    client_id = f"req-{uuid.uuid4().hex[:8]}"
    async with (node_client(broker, *ADMIN) as client, replies_to(client, topics, client_id=client_id) as r):
        yield r


class Registrations:
    """Registers devices one name after another, ``width`` in flight, until stopped; sorts the answers."""

    def __init__(self, requests, *, width: int = 8, timeout: float = 4.0) -> None:
        self.requests, self.width, self.timeout = requests, width, timeout
        self.accepted: dict[str, dict] = {}  # device name -> its answer
        self.failed: dict[str, str] = {}  # device name -> the requester's error
        self.stop = asyncio.Event()
        self._next = 0

    async def run(self) -> None:
        await asyncio.gather(*(self._lane() for _ in range(self.width)))

    async def _lane(self) -> None:
        while not self.stop.is_set():
            name = f"dev {self._next}"
            self._next += 1
            await self.one(name)

    async def one(self, name: str) -> None:
        try:
            self.accepted[name] = await self.requests.request(
                PROVISIONER_SERVICE, "register", {"home_id": "home", "device_name": name}, timeout=self.timeout)
            self.failed.pop(name, None)
        except RequestError as exc:
            self.failed[name] = str(exc)


async def test_provisioner_killed_under_registrations_and_first_onlines(guarded_broker, database, topics: Topics):
    service = ServiceProcess(service_env(guarded_broker, database, topics, user=ADMIN,
                                         NODEFLEET_PROVISIONER_CREDENTIALS="dynsec",
                                         NODEFLEET_PROVISIONER_HTTP_PORT="-1"), name="provisioner")
    service.start()
    try:
        await service.wait_ready()
        async with requester(guarded_broker, topics) as requests, \
                watching(guarded_broker, f"{topics.root}/+/config") as configs:
            # Nodes registered beforehand come online in a stream through the kill.
            early = Registrations(requests)
            for i in range(20):
                await early.one(f"node {i}")
            nodes = [answer["mqtt_config"] for answer in early.accepted.values()]
            assert len(nodes) == 20, early.failed
            load = Registrations(requests)
            registering = asyncio.create_task(load.run())

            came_online: list[float] = []

            async def first_onlines() -> None:
                for i, mqtt in enumerate(nodes):
                    async with node_client(guarded_broker, mqtt["username"], mqtt["password"]) as client:
                        await come_online(client, topics, mqtt["node_name"], f"chip-{i}")
                    came_online.append(time.monotonic())
                    await asyncio.sleep(0.1)

            onlines = asyncio.create_task(first_onlines())
            while len(load.accepted) < 20:
                await asyncio.sleep(0.02)
            service.kill()
            killed_at = time.monotonic()
            accepted_at_kill = len(load.accepted)
            await asyncio.sleep(1.0)
            service.start()
            await service.wait_ready()
            back = time.monotonic() - killed_at
            while_down = sum(killed_at <= t <= killed_at + back for t in came_online)
            while len(load.accepted) < accepted_at_kill + 20:
                await asyncio.sleep(0.02)
            load.stop.set()
            await registering
            await onlines
            timed_out = dict(load.failed)
            for name in timed_out:  # what the kill left unanswered, retried by name as the app does
                await load.one(name)
            listed = await requests.request(PROVISIONER_SERVICE, "list", {}, timeout=10)
            by_node = {row["node"]: row for row in listed}
            # Every node came online once: one retained config each, the first online handled once.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if all(configs.payloads(topics.config(m["node_name"])) for m in nodes):
                    break
                await asyncio.sleep(0.1)
            config_counts = [len(configs.payloads(topics.config(m["node_name"]))) for m in nodes]
        events = service.events()
    finally:
        service.stop()
    active = [row for row in listed if row["status"] != "revoked"]
    names = [row["device_name"] for row in active]
    print(f"provisioner kill -9: {len(load.accepted)} registrations accepted ({accepted_at_kill} before the kill), "
          f"{len(timed_out)} unanswered by the kill and retried; {len(nodes)} first onlines ({while_down} while it was down); back {back:.2f} s "
          f"after the kill; configs per node {sorted(set(config_counts))}")
    assert load.failed == {}, load.failed
    assert all("no answer from the provisioner service" in why for why in timed_out.values()), timed_out
    assert sorted(names) == sorted(set(names)), "a device registered twice"
    assert set(load.accepted) | {f"node {i}" for i in range(20)} == set(names)
    for name, answer in load.accepted.items():  # the answer given is the device kept
        assert by_node[answer["mqtt_config"]["node_name"]]["device_name"] == name
    assert all(by_node[m["node_name"]]["status"] == "provisioned" for m in nodes)
    assert config_counts == [1] * len(nodes), config_counts
    assert while_down > 0, "the kill must fall among the first onlines"
    assert "Traceback" not in service.log_path.read_text()
    assert "provisioner_ready" in events

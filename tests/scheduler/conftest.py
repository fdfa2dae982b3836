"""Fixtures for the scheduler tests: real simulated nodes, Mosquitto, PostgreSQL, the scheduler itself and,
where run history is read, the telemetry service that stores the run events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from background import in_background

from nodefleet import wire
from nodefleet.contracts import Topics
from nodefleet.contracts.scheduling import SCHEDULER_SERVICE
from nodefleet.contracts.topics import Command, NodeTopic
from nodefleet.embedded.mosquitto import Mosquitto
from nodefleet.fleet import Requester
from nodefleet.sim import SimNode
from services.scheduler.app import serve
from services.scheduler.settings import SchedulerSettings
from services.telemetry.app import serve as serve_telemetry
from services.telemetry.settings import TelemetrySettings

FAST_CONFIG = {"v": 1, "version": 1, "telemetry_period": 60, "ap_after": 60}
GRACE = 2.0
LEASE = 2.0


def aligned(lead: float) -> tuple[int, int, str]:
    """A run start ``lead`` s from now, a tz offset that puts it on a whole local minute, and that HH:MM."""
    start = int(time.time() + lead)
    offset = (-start) % 60
    local = (start + offset) % 86400
    return start, offset, f"{local // 3600:02d}:{local // 60 % 60:02d}"


def node_config(offset: int) -> dict[str, Any]:
    return {**FAST_CONFIG, "tz": [{"from": 0, "offset": offset}]}


class Watch:
    """Every message under the test's roots, with its arrival time."""

    def __init__(self, client: wire.Client, topics: Topics) -> None:
        self.client = client
        self.topics = topics
        self.messages: list[tuple[float, str, bytes]] = []
        self._arrived = asyncio.Event()
        self.requester = Requester(client, topics, client_id=f"watch-{uuid.uuid4().hex[:8]}")

    async def request(self, action: str, query: Any) -> Any:
        """A fleet request to the scheduler; the reply's data."""
        return await self.requester.request(SCHEDULER_SERVICE, action, query)

    async def feed(self) -> None:
        async for message in self.client.messages:
            if self.requester.feed(message):
                continue
            self.messages.append((time.time(), str(message.topic), bytes(message.payload)))
            self._arrived.set()

    def found(self, topic: str, match: Callable[[Any], bool] | None = None) -> list[Any]:
        out = []
        for _, t, payload in self.messages:
            if t != topic or not payload:
                continue
            try:
                value = json.loads(payload)
            except ValueError:
                value = payload.decode()
            if match is None or match(value):
                out.append(value)
        return out

    async def wait(self, topic: str, match: Callable[[Any], bool] | None = None, *, timeout: float = 10.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                hits = self.found(topic, match)
                if hits:
                    return hits[-1]
                self._arrived.clear()
                await self._arrived.wait()

    def switches(self, node: str, run_id: str) -> list[dict[str, Any]]:
        return self.found(self.topics.set(node, Command.SWITCH), lambda c: isinstance(c, dict) and c.get("run_id") == run_id)

    def events(self, node: str, kind: str | None = None) -> list[dict[str, Any]]:
        return self.found(self.topics.scheduler_events(),
                          lambda e: e["node"] == node and (kind is None or e["kind"] == kind))

    async def retain(self, topic: str, payload: Any) -> None:
        body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        await self.client.publish(topic, body, qos=1, retain=True)


@pytest.fixture
async def watch(mosquitto: Mosquitto, topics: Topics) -> AsyncIterator[Watch]:
    client = wire.Client(wire.BrokerAddress.parse(mosquitto.url), client_id=f"watch-{uuid.uuid4().hex[:8]}")
    async with client:
        w = Watch(client, topics)
        await client.subscribe(f"{topics.root}/#", qos=1)
        await client.subscribe(f"{topics.fleet}/#", qos=1)
        await w.requester.start()
        async with in_background(w.feed()):
            yield w


@pytest.fixture
async def make_node(tmp_path, mosquitto: Mosquitto, topics: Topics, watch: Watch):
    """Factory: a started simulated node with a tz offset, its config also retained for the scheduler."""
    nodes: list[SimNode] = []

    async def make(name: str, *, offset: int, env: dict[str, str] | None = None) -> SimNode:
        node = SimNode(tmp_path / name, name=name, env=env, http=False)
        node.provision(broker=mosquitto.url, topic_prefix=topics.prefix(name), keepalive=5, max_backoff=1)
        node.write("config.json", node_config(offset))
        nodes.append(node)
        await watch.retain(topics.config(name), node_config(offset))
        await node.start()
        try:
            await watch.wait(topics.status(name), lambda s: s == "online", timeout=15)
        except TimeoutError:
            raise AssertionError(f"node {name} did not come online:\n{node.output()}") from None
        return node

    yield make
    for node in nodes:
        await node.stop()
        assert "Traceback" not in node.output(), node.output()


@pytest.fixture
async def scheduler(mosquitto: Mosquitto, topics: Topics, database: str):
    """Factory: an in-process scheduler instance on the test's roots and database; cancelled at the end."""
    tasks: list[asyncio.Task[None]] = []

    async def start(instance: str = "sched-a", **overrides: Any) -> SchedulerSettings:
        settings = SchedulerSettings(mqtt_url=mosquitto.url, database_url=database, topic_root=topics.root,
                                     fleet_root=topics.fleet, instance=instance, grace=GRACE, lease=LEASE, **overrides)
        ready = asyncio.Event()
        task = asyncio.create_task(serve(settings, ready=ready))
        tasks.append(task)
        done, _ = await asyncio.wait([task, asyncio.create_task(ready.wait())], timeout=15,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        assert ready.is_set(), "scheduler did not get ready"
        return settings

    start.tasks = tasks  # type: ignore[attr-defined]  # a test may stop an instance early
    yield start
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def telemetry(mosquitto: Mosquitto, topics: Topics, database: str):
    """The telemetry service beside the scheduler, on the same roots and database: it keeps the run history."""
    settings = TelemetrySettings(mqtt_url=mosquitto.url, database_url=database, topic_root=topics.root,
                                 fleet_root=topics.fleet, client_id=f"telemetry-{uuid.uuid4().hex[:8]}", instance="test",
                                 flush_interval=0.02, maintenance_interval=3600)
    ready = asyncio.Event()
    task = asyncio.create_task(serve_telemetry(settings, ready=ready))
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait([task, waiter], timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    assert ready.is_set(), "telemetry service did not get ready"
    yield settings
    waiter.cancel()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def cli(mosquitto: Mosquitto, topics: Topics, *args: str) -> tuple[int, str, str]:
    """``nodefleet schedule ARGS`` in a subprocess on the test's roots: (exit code, stdout, stderr)."""
    env = {**os.environ, "NODEFLEET_MQTT_URL": mosquitto.url, "NODEFLEET_TOPIC_ROOT": topics.root,
           "NODEFLEET_FLEET_ROOT": topics.fleet}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "nodefleet", "schedule", *args, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode or 0, out.decode(), err.decode()


def schedule(version: int, *rules: dict[str, Any]) -> dict[str, Any]:
    return {"v": 1, "version": version, "rules": list(rules)}


def schedule_topic(topics: Topics, node: str) -> str:
    return topics.node(node, NodeTopic.SCHEDULE)

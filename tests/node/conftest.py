"""Fixtures for the firmware tests: simulated nodes on the real interpreter and a watching client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from background import in_background
from pydantic import ValidationError

from nodefleet import wire
from nodefleet.contracts import NODE_PAYLOADS, Topics
from nodefleet.contracts.topics import Command, NodeTopic
from nodefleet.embedded.mosquitto import Mosquitto
from nodefleet.sim import SimNode

# Short periods so each test takes seconds: the same knobs a real deployment sets through config.
FAST_CONFIG = {"v": 1, "version": 1, "telemetry_period": 1, "ap_after": 1}
SLOW = 60.0
"""Deadline for what takes a second or two alone: generous for a loaded machine (CI, libfaketime), still bounded."""


class Watch:
    """Subscribes to one node's topics; validates every JSON payload the node publishes with the contract models."""

    def __init__(self, client: wire.Client, topics: Topics, node: str) -> None:
        self.client = client
        self.topics = topics
        self.node = node
        self.messages: list[tuple[str, bytes, bool]] = []
        self.invalid: list[str] = []
        self._arrived = asyncio.Event()

    def kind(self, topic: str) -> str:
        return topic.removeprefix(self.topics.prefix(self.node) + "/")

    async def feed(self) -> None:
        async for message in self.client.messages:
            topic, payload = str(message.topic), bytes(message.payload)
            kind = self.kind(topic)
            last = kind.rsplit("/", 1)[-1]
            model = None if "set/" in kind or "ota/" in kind else NODE_PAYLOADS.get(last)
            if model is not None and last not in ("config", "schedule") and payload:
                try:
                    model.model_validate_json(payload)
                except ValidationError as exc:
                    self.invalid.append(f"{kind}: {payload[:300]!r}: {exc}")
            self.messages.append((kind, payload, message.retain))
            self._arrived.set()

    def assert_valid(self) -> None:
        assert not self.invalid, "the node published payloads the contract models reject:\n" + "\n".join(self.invalid)

    def mark(self) -> int:
        return len(self.messages)

    def found(self, kind: str, match: Callable[[Any], bool] | None = None, since: int = 0) -> list[Any]:
        out = []
        for k, payload, _ in self.messages[since:]:
            if k != kind:
                continue
            value: Any = payload.decode() if kind.endswith("status") else json.loads(payload)
            if match is None or match(value):
                out.append(value)
        return out

    async def wait(self, kind: str, match: Callable[[Any], bool] | None = None, *, since: int = 0,
                   timeout: float = 10.0) -> Any:
        """The first message of ``kind`` (after index ``since``) that matches."""
        async with asyncio.timeout(timeout):
            while True:
                hits = self.found(kind, match, since)
                if hits:
                    return hits[0]
                self._arrived.clear()
                await self._arrived.wait()

    async def send(self, command: Command | str, payload: Any, *, qos: int = 1) -> None:
        topic = (self.topics.set(self.node, Command(command)) if command in set(Command)
                 else f"{self.topics.prefix(self.node)}/set/{command}")
        body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        await self.client.publish(topic, body, qos=qos)

    async def retain(self, kind: NodeTopic, payload: Any) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload)
        await self.client.publish(self.topics.node(self.node, kind), body, qos=1, retain=True)

    async def command(self, command: str, payload: dict[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
        """Send a command with a fresh id and return its ack."""
        cid = payload.get("id") or f"c{uuid.uuid4().hex[:10]}"
        mark = self.mark()
        await self.send(command, {**payload, "id": cid})
        return await self.wait("ack", lambda a: a["id"] == cid, since=mark, timeout=timeout)


@contextlib.asynccontextmanager
async def watching(broker: Mosquitto, topics: Topics, node: str) -> AsyncIterator[Watch]:
    client = wire.Client(wire.BrokerAddress.parse(broker.url), client_id=f"watch-{uuid.uuid4().hex[:8]}")
    async with client:
        watch = Watch(client, topics, node)
        await client.subscribe(f"{topics.prefix(node)}/#", qos=1)
        async with in_background(watch.feed()):
            yield watch


@contextlib.asynccontextmanager
async def online(node: SimNode, broker: Any, topics: Topics) -> AsyncIterator[Watch]:
    """A watcher of ``node`` on ``broker``, and the node started and online (its state seen)."""
    async with watching(broker, topics, node.name) as watch:
        await node.start()
        try:
            await watch.wait("state", timeout=SLOW)
        except TimeoutError:
            raise AssertionError(f"node {node.name} did not come online; its output:\n{node.output()}") from None
        yield watch
        watch.assert_valid()
    assert "Traceback" not in node.output(), node.output()


async def until(node: SimNode, check: Callable[[dict[str, Any]], bool], timeout: float = SLOW) -> dict[str, Any]:
    """The node's board (simulator control channel) once ``check`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        board = await node.ctl()
        if check(board):
            return board
        if time.monotonic() > deadline:
            raise AssertionError(f"board never reached the condition: {board}")
        await asyncio.sleep(0.1)


class OwnBroker:
    """A node on a Mosquitto of its own, for broker outages: stopped, then started again on the same port."""

    def __init__(self, broker: Mosquitto, node: SimNode, topics: Topics) -> None:
        self.broker = broker
        self.node = node
        self.topics = topics

    async def stop(self) -> None:
        """Stop the broker; returns once the node shows the outage on its LED."""
        self.broker.stop()
        await until(self.node, lambda b: b["led"] == "no_broker")

    @contextlib.asynccontextmanager
    async def restart(self) -> AsyncIterator[Watch]:
        """Start the broker again; the watcher is subscribed before the node can reconnect.

        The node is paused (SIGSTOP) meanwhile: its reconnect backoff can be half a second, and on a loaded
        machine the watcher takes longer than that, so what the node publishes on reconnecting and does not
        retain (its log) would be gone before anyone listened.
        """
        pid = self.node.pid
        assert pid is not None and self.node.running, "the node is not running"
        os.kill(pid, signal.SIGSTOP)
        try:
            self.broker.start(timeout=SLOW)
            async with watching(self.broker, self.topics, self.node.name) as watch:
                os.kill(pid, signal.SIGCONT)
                pid = None
                yield watch
                watch.assert_valid()
        finally:
            if pid is not None:
                os.kill(pid, signal.SIGCONT)


@pytest.fixture
async def make_node(tmp_path, mosquitto: Mosquitto, topics: Topics):
    """Factory: a provisioned simulated node (not started) with fast settings; every node is stopped at the end."""
    nodes: list[SimNode] = []

    def make(name: str = "node-1", *, config: dict[str, Any] | None = None, provisioned: bool = True,
             env: dict[str, str] | None = None, keepalive: int = 5, broker: Any = None) -> SimNode:
        """``broker``: the one to provision the node for (anything with a ``url``), else the session's Mosquitto."""
        node = SimNode(tmp_path / name, name=name, env=env)
        if provisioned:
            node.provision(broker=(broker or mosquitto).url, topic_prefix=topics.prefix(name), keepalive=keepalive,
                           max_backoff=1)
        node.write("config.json", {**FAST_CONFIG, **(config or {})})
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.stop()


@pytest.fixture
async def own_broker(make_node, topics: Topics) -> AsyncIterator[OwnBroker]:
    """node-2 online on a Mosquitto of its own (keepalive 2 s, reconnect backoff at most 1 s)."""
    broker = Mosquitto()
    broker.start()
    try:
        node = make_node("node-2", broker=broker, keepalive=2)
        async with online(node, broker, topics):
            pass
        yield OwnBroker(broker, node, topics)
    finally:
        broker.stop()


@pytest.fixture
async def watch(mosquitto: Mosquitto, topics: Topics) -> AsyncIterator[Watch]:
    """A watcher of node ``node-1``; fails the test if the node published anything the contract rejects."""
    async with watching(mosquitto, topics, "node-1") as w:
        yield w
        w.assert_valid()


@pytest.fixture
async def node(make_node, watch: Watch) -> AsyncIterator[SimNode]:
    """node-1 started and online (status, info and state seen)."""
    n = make_node()
    await n.start()
    try:
        await watch.wait("state", timeout=SLOW)  # under libfaketime on a loaded machine 15 s was once too short
    except TimeoutError:
        raise AssertionError(f"node did not come online; its output:\n{n.output()}") from None
    yield n
    assert "Traceback" not in n.output(), n.output()

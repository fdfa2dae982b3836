"""MQTT over WebSockets, checked with a real WebSocket MQTT client (paho, ``transport="websockets"``).

``check_websocket_security`` is what an app sees on either broker: an
operator login gets a node's state live; a node login is held to its prefix
(its publishes elsewhere never arrive, nor does what is addressed to another
node); anonymous and wrong passwords are refused.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from nodefleet.contracts import State, Topics
from nodefleet.contracts.topics import Command


class Refused(Exception):
    """The broker refused the WebSocket MQTT login (CONNACK with an error, or the connection closed)."""


class WsClient:
    def __init__(self, port: int, user: str | None, password: str | None) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"ws-{uuid.uuid4().hex[:10]}",
                                  transport="websockets", protocol=paho.MQTTv311)
        if user is not None:
            self.client.username_pw_set(user, password)
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.closed = threading.Event()
        self.reason: str | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self.closed.set()
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        self.port = port

    def _on_connect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            self.reason = str(reason_code)
            self.closed.set()
        else:
            self.connected.set()

    def connect(self, timeout: float = 10.0) -> None:
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not (self.connected.is_set() or self.closed.is_set()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.connected.is_set():
            self.close()
            raise Refused(self.reason or "connection closed before CONNACK")

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(10), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: str | bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def received(self, wait: float) -> list[paho.MQTTMessage]:
        """Messages arriving within ``wait`` seconds."""
        out: list[paho.MQTTMessage] = []
        try:
            out.append(self.messages.get(timeout=wait))
            while True:
                out.append(self.messages.get(timeout=0.3))
        except queue.Empty:
            return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def ws_client(port: int, user: str | None = None, password: str | None = None) -> Iterator[WsClient]:
    client = WsClient(port, user, password)
    client.connect()
    try:
        yield client
    finally:
        client.close()


def refused(port: int, user: str | None = None, password: str | None = None) -> bool:
    try:
        with ws_client(port, user, password):
            return False
    except Refused:
        return True


def _check(port: int, topics: Topics, operator: tuple[str, str], node: str, node_password: str, other: str) -> None:
    assert refused(port), "anonymous WebSocket client was let in"
    assert refused(port, operator[0], "wrong"), "a wrong password was let in"
    with ws_client(port, *operator) as app, ws_client(port, node, node_password) as device:
        app.subscribe(f"{topics.root}/#")
        device.subscribe(topics.set(node, Command.SWITCH))
        device.subscribe(topics.set(other, Command.SWITCH))  # outside its inbox: refused or never delivered
        # The node's state reaches the app live; its publish under another node's prefix does not.
        state = State(seq=1, relay="ON", mode="manual").model_dump_json()
        device.publish(topics.state(other), state)
        device.publish(topics.state(node), state)
        seen = {message.topic: message.payload for message in app.received(3.0)}
        assert seen.get(topics.state(node)) == state.encode(), seen
        assert topics.state(other) not in seen, seen
        # What is addressed to the node arrives; what is addressed to another node does not.
        app.publish(topics.set(other, Command.SWITCH), "ON")
        app.publish(topics.set(node, Command.SWITCH), "OFF")
        got = [(message.topic, message.payload) for message in device.received(3.0)]
        assert got == [(topics.set(node, Command.SWITCH), b"OFF")], got


async def check_websocket_security(port: int, *, topics: Topics, operator: tuple[str, str], node: str,
                                   node_password: str, other: str) -> None:
    """Run the checks in a thread (paho is synchronous); raises AssertionError on the first that fails."""
    await asyncio.to_thread(_check, port, topics, operator, node, node_password, other)

"""A small blocking MQTT 3.1.1 test client (paho) for the broker contract tests.

Each call waits for the broker's answer (CONNACK, SUBACK, PUBACK) so a test
reads as a sequence of steps; received messages land in a queue.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import paho.mqtt.client as mqtt

TIMEOUT = 5.0


QUIET = 0.4
"""How long "nothing arrives" is watched for."""


def payloads(messages) -> list[bytes]:
    return [m.payload for m in messages]


class ProbeError(AssertionError):
    """The broker did not answer as the test expected."""


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int


class Probe:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str | None = None,
        clean_session: bool = True,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 60,
        manual_ack: bool = False,
        will: tuple[str, bytes, int, bool] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.client_id = client_id or f"probe-{uuid.uuid4().hex[:10]}"
        self.keepalive = keepalive
        self.messages: queue.Queue[Received] = queue.Queue()
        self._connack: queue.Queue[int] = queue.Queue()
        self._subacks: dict[int, list[int]] = {}
        self._suback_event = threading.Condition()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            topic, payload, qos, retain = will
            self.client.will_set(topic, payload, qos=qos, retain=retain)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.session_present = False

    # -- callbacks (paho's network thread) ----------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.session_present = bool(flags.session_present)
        self._connack.put(reason_code.value)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._suback_event:
            self._subacks[mid] = [code.value for code in reason_codes]
            self._suback_event.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        self.messages.put(
            Received(message.topic, bytes(message.payload), message.qos, bool(message.retain), bool(message.dup), message.mid)
        )

    # -- steps --------------------------------------------------------------

    def try_connect(self) -> int:
        """Connect; the CONNACK code (0 accepted; non-zero refused, or -1 when the broker just closed)."""
        try:
            self.client.connect(self.host, self.port, keepalive=self.keepalive)
        except OSError as exc:
            raise ProbeError(f"cannot reach {self.host}:{self.port}: {exc}") from exc
        self.client.loop_start()
        try:
            return self._connack.get(timeout=TIMEOUT)
        except queue.Empty:
            return -1

    def connect(self) -> Probe:
        code = self.try_connect()
        if code != 0:
            self.close()
            raise ProbeError(f"{self.client_id}: connection refused ({code})")
        return self

    def subscribe(self, topic_filter: str, qos: int = 1) -> int:
        """Subscribe and return the granted QoS (128 when refused)."""
        result, mid = self.client.subscribe(topic_filter, qos=qos)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise ProbeError(f"subscribe {topic_filter!r} failed to send: {result}")
        with self._suback_event:
            if not self._suback_event.wait_for(lambda: mid in self._subacks, timeout=TIMEOUT):
                raise ProbeError(f"no SUBACK for {topic_filter!r}")
            return self._subacks.pop(mid)[0]

    def subscribe_many(self, filters: list[str], qos: int = 1) -> list[int]:
        """Subscribe to all of ``filters`` in one SUBSCRIBE (as the firmware does); the granted QoS of each."""
        result, mid = self.client.subscribe([(topic_filter, qos) for topic_filter in filters])
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise ProbeError(f"subscribe {filters!r} failed to send: {result}")
        with self._suback_event:
            if not self._suback_event.wait_for(lambda: mid in self._subacks, timeout=TIMEOUT):
                raise ProbeError(f"no SUBACK for {filters!r}")
            return self._subacks.pop(mid)

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=TIMEOUT)
        if not info.is_published():
            raise ProbeError(f"publish to {topic!r} was not acknowledged")

    def ack(self, message: Received) -> None:
        self.client.ack(message.mid, message.qos)

    def get(self, timeout: float = TIMEOUT) -> Received:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise ProbeError(f"{self.client_id}: no message within {timeout:g} s") from None

    def get_many(self, count: int, timeout: float = TIMEOUT) -> list[Received]:
        deadline = time.monotonic() + timeout
        return [self.get(max(0.01, deadline - time.monotonic())) for _ in range(count)]

    def nothing_within(self, seconds: float) -> list[Received]:
        """Wait ``seconds`` and return whatever arrived (a test asserts it is empty)."""
        time.sleep(seconds)
        return self.drain()

    def drain(self) -> list[Received]:
        found = []
        while True:
            try:
                found.append(self.messages.get_nowait())
            except queue.Empty:
                return found

    def disconnect(self) -> None:
        """Clean disconnect: DISCONNECT is sent, so the broker must not publish the will."""
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Unclean disconnect: the TCP connection closes without DISCONNECT, as when a process dies."""
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # also ends paho's network thread at once
            except OSError:
                pass
        self.client.loop_stop()
        if sock is not None:
            sock.close()

    def go_silent(self) -> None:
        """Stop sending anything (no PINGREQ) with the connection left open, as when a node loses power."""
        self.client.loop_stop()

    def close(self) -> None:
        if self.client.is_connected():
            self.client.disconnect()  # wakes paho's network thread so loop_stop does not wait for its select
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

"""The general MQTT client of every service session, the CLI and the simulator: aiomqtt behind our own surface.

The only module that imports aiomqtt.  Its exceptions are translated here
into :mod:`nodefleet.errors` (``BrokerRefused`` for a refused login,
``BrokerUnavailable`` when the broker cannot be reached or does not answer,
``ConnectionLost`` when an open connection closes), and received messages
are our :class:`Message`, so no other module knows which library is below.
MQTT 3.1.1 everywhere.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from types import TracebackType

import aiomqtt

from ..errors import BrokerRefused, BrokerUnavailable, ConnectionLost, WireError
from .address import BrokerAddress, unreachable


@dataclass(frozen=True, slots=True)
class Will:
    """The last will: published by the broker when the connection dies without a goodbye."""

    topic: str
    payload: str | bytes
    qos: int = 1
    retain: bool = True


@dataclass(slots=True)
class Message:
    """One received PUBLISH."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False

    def matches(self, topic_filter: str) -> bool:
        """True if the topic matches ``topic_filter`` (wildcards and ``$share/<group>/`` understood)."""
        return aiomqtt.Topic(self.topic).matches(topic_filter)


def _lost(exc: aiomqtt.MqttError, doing: str) -> WireError:
    # aiomqtt says "Operation timed out" (its own timeout, 10 s by default) only in the message.
    if "timed out" in str(exc):
        return BrokerUnavailable(f"the broker did not answer in time while {doing}")
    return ConnectionLost(f"lost the broker while {doing}: {exc}")


class _Messages:
    """``async for message in client.messages``: our Message, our errors."""

    __slots__ = ("_inner",)

    def __init__(self, inner: aiomqtt.client.MessagesIterator) -> None:
        self._inner = inner

    def __aiter__(self) -> _Messages:
        return self

    async def __anext__(self) -> Message:
        try:
            message = await self._inner.__anext__()
        except aiomqtt.MqttError as exc:
            raise ConnectionLost(f"the connection closed: {exc.__cause__ or exc}") from exc
        return Message(message.topic.value, message.payload, message.qos, message.retain)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._inner)


class Client:
    """An MQTT 3.1.1 connection to ``address``; ``async with`` connects and says goodbye.

    ``nodelay`` turns Nagle's algorithm off: a request/reply client otherwise waits for
    delayed ACKs (about 40 ms) whenever two small packets follow each other.  Off by
    default: a node answering a command flood drops acks from its bounded queue when the
    commands come unpaced (tests/node/test_commands.py), so senders of bursts keep Nagle
    until the node pushes back instead of dropping.
    ``max_inflight`` raises the window of unacknowledged QoS 1 publishes (20);
    ``pending_calls`` the count of waiting publishes above which aiomqtt warns.
    """

    def __init__(
        self,
        address: BrokerAddress,
        *,
        client_id: str,
        clean_session: bool = True,
        will: Will | None = None,
        keepalive: int = 30,
        max_queued_outgoing: int | None = None,
        nodelay: bool = False,
        max_inflight: int | None = None,
        pending_calls: int | None = None,
    ) -> None:
        self.address = address
        self.client_id = client_id
        self._client = aiomqtt.Client(
            address.host,
            address.port,
            username=address.username,
            password=address.password,
            identifier=client_id,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=clean_session,
            will=aiomqtt.Will(will.topic, will.payload, qos=will.qos, retain=will.retain) if will else None,
            keepalive=keepalive,
            max_queued_outgoing_messages=max_queued_outgoing,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)] if nodelay else None,
            max_inflight_messages=max_inflight,
            tls_context=address.ssl_context(),
        )
        if pending_calls is not None:
            self._client.pending_calls_threshold = pending_calls
        self.messages = _Messages(self._client.messages)

    async def __aenter__(self) -> Client:
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttCodeError as exc:
            code = getattr(exc.rc, "value", exc.rc)
            if isinstance(code, int) and code:
                raise BrokerRefused.connack(code) from exc
            raise BrokerUnavailable(f"cannot connect to the broker at {self.address.url}: {exc}") from exc
        except OSError as exc:
            raise BrokerUnavailable(unreachable(self.address, exc)) from exc
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailable(unreachable(self.address, exc.__cause__ or exc)) from exc
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            await self._client.__aexit__(exc_type, exc, tb)
        except aiomqtt.MqttError as error:
            raise _lost(error, "disconnecting") from error

    async def publish(self, topic: str, payload: str | bytes | None = None, *, qos: int = 0,
                      retain: bool = False) -> None:
        """Publish; for QoS 1 return once the broker acknowledged it."""
        try:
            await self._client.publish(topic, payload, qos=qos, retain=retain)
        except aiomqtt.MqttError as exc:
            raise _lost(exc, f"publishing to {topic}") from exc

    async def subscribe(self, topic_filter: str, *, qos: int = 0) -> list[int]:
        """Subscribe; the broker's SUBACK codes (granted QoS, or 128 for a refusal, which is not raised:
        brokers differ in what they refuse)."""
        try:
            granted = await self._client.subscribe(topic_filter, qos=qos)
        except aiomqtt.MqttError as exc:
            raise _lost(exc, f"subscribing to {topic_filter}") from exc
        return [getattr(code, "value", code) for code in granted]  # type: ignore[union-attr]

    async def unsubscribe(self, topic_filter: str) -> None:
        try:
            await self._client.unsubscribe(topic_filter)
        except aiomqtt.MqttError as exc:
            raise _lost(exc, f"unsubscribing from {topic_filter}") from exc

"""A publish-only MQTT 3.1.1 connection for backups and run events: a batch of publishes is one write.

The scheduler's aiomqtt session (subscriptions, fleet requests, presence)
cannot carry a burst: aiomqtt's ``publish`` waits for each acknowledgement
and walks every pending call on each call, and paho under it walks every
unacknowledged message on each PUBACK once an in-flight window is set, so
10,000 backups due in one second took seconds.  A connection that only
publishes needs little of the protocol: CONNECT/CONNACK, PUBLISH/PUBACK and
PINGREQ/PINGRESP, written here on an asyncio protocol.  A QoS 1 batch comes
back as a future that is done once the broker acknowledged every message of
it, or fails with :class:`NotSent` if the connection closed first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from nodefleet import mqtt_packets as packets
from nodefleet.backoff import Backoff
from nodefleet.logging import get_logger
from nodefleet.mqtt import BrokerAddress

log = get_logger(__name__)

MAX_UNACKED = 60_000  # packet ids are 16 bits; keep a margin so finding a free one stays quick
CONNECT_TIMEOUT = 10.0


class NotSent(Exception):
    """The messages were not handed to the broker: not connected, or too many unacknowledged."""


class ConnectRefused(ConnectionError):
    """The broker answered CONNECT with a refusal."""


class _Batch:
    """The QoS 1 messages of one ``publish`` call the broker has not acknowledged yet."""

    __slots__ = ("acked", "remaining")

    def __init__(self, size: int, acked: asyncio.Future[None]) -> None:
        self.remaining = size
        self.acked = acked


class _Link(asyncio.Protocol):
    """One TCP connection: reads CONNACK, PUBACKs and PINGRESPs; anything else closes it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[int] = loop.create_future()
        self.closed: asyncio.Future[BaseException | None] = loop.create_future()
        self.unacked: dict[int, _Batch] = {}  # packet id -> its batch
        self.heard = time.monotonic()
        self._next_id = 0
        self._reader = packets.PacketReader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: BaseException | None) -> None:
        lost = NotSent(f"the connection closed before the broker acknowledged them ({exc or 'closed'})")
        for batch in {id(b): b for b in self.unacked.values()}.values():
            if not batch.acked.done():
                batch.acked.set_exception(lost)
        if not self.connack.done():
            self.connack.set_exception(ConnectionError("the broker closed the connection before CONNACK"))
        if not self.closed.done():
            self.closed.set_result(exc)

    def data_received(self, data: bytes) -> None:
        self.heard = time.monotonic()
        try:
            for first, body in self._reader.feed(data):
                kind = first & 0xF0
                if kind == packets.PUBACK and len(body) == 2:
                    batch = self.unacked.pop(body[0] << 8 | body[1], None)
                    if batch is not None:
                        batch.remaining -= 1
                        if not batch.remaining and not batch.acked.done():
                            batch.acked.set_result(None)
                elif kind == packets.CONNACK and len(body) == 2 and not self.connack.done():
                    self.connack.set_result(body[1])
                elif kind != packets.PINGRESP:
                    log.warning("publisher_unexpected_packet", kind=kind >> 4, length=len(body))
                    self.close()
                    return
        except packets.ProtocolError as exc:
            log.warning("publisher_bad_stream", error=str(exc))
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def write(self, messages: Sequence[tuple[str, bytes]], qos: int) -> asyncio.Future[None]:
        transport = self.transport
        if transport is None or transport.is_closing() or not self.connack.done():
            raise NotSent("not connected to the broker")
        if qos and len(self.unacked) + len(messages) > MAX_UNACKED:
            raise NotSent(f"{len(self.unacked)} publishes not acknowledged by the broker yet")
        acked: asyncio.Future[None] = self.loop.create_future()
        batch = _Batch(len(messages), acked)
        out = []
        for topic, payload in messages:
            packet_id = 0
            if qos:
                packet_id = self._free_id()
                self.unacked[packet_id] = batch
            out.append(packets.publish(topic.encode(), payload, qos, packet_id))
        transport.write(b"".join(out))  # one write: the kernel sends the batch back to back
        if not qos:
            acked.set_result(None)  # QoS 0: nothing comes back
        return acked

    def _free_id(self) -> int:
        while True:
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self.unacked:
                return self._next_id


class Publisher:
    """Stays connected (``run``) and publishes batches; ``publish`` raises :class:`NotSent` while it is not."""

    def __init__(self, address: BrokerAddress, *, client_id: str, keepalive: int = 30) -> None:
        self.address = address
        self.client_id = client_id
        self.keepalive = keepalive
        self.connected = asyncio.Event()
        self._link: _Link | None = None

    @property
    def unacked(self) -> int:
        """QoS 1 publishes of the current connection the broker has not acknowledged."""
        return len(self._link.unacked) if self._link is not None else 0

    def publish(self, messages: Sequence[tuple[str, bytes]], *, qos: int = 1) -> asyncio.Future[None]:
        """Write ``(topic, payload)`` messages at QoS 0 or 1 in one go; raises :class:`NotSent` if not connected.

        Returns at once with a future that is done when the broker acknowledged every
        QoS 1 message of the batch (at once for QoS 0), or fails with :class:`NotSent`
        if the connection closed before.
        """
        if qos not in (0, 1):
            raise ValueError(f"qos {qos}: this publisher speaks QoS 0 and 1")
        if self._link is None:
            raise NotSent("not connected to the broker")
        if not messages:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return self._link.write(messages, qos)

    async def run(self) -> None:
        """Connect, keep alive, reconnect with backoff; until cancelled."""
        backoff = Backoff()
        while True:
            backoff.attempt()
            try:
                await self._connection()
            except (OSError, TimeoutError) as exc:
                log.warning("publisher_connection_lost", broker=self.address.url, error=str(exc) or type(exc).__name__,
                            retry_in=round(backoff.next_pause, 2))
            await backoff.wait()

    async def _connection(self) -> None:
        loop = asyncio.get_running_loop()
        link = _Link(loop)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await loop.create_connection(lambda: link, self.address.host, self.address.port)
                assert link.transport is not None
                # Clean session, no will: the service's main session carries the last will.
                link.transport.write(packets.connect(self.client_id, clean_session=True, keepalive=self.keepalive,
                                                     username=self.address.username, password=self.address.password))
                code = await link.connack
            if code != 0:
                raise ConnectRefused(f"broker refused the connection: {packets.CONNACK_REASONS.get(code, f'code {code}')}")
            self._link = link
            self.connected.set()
            await self._keep_alive(link)
            lost = link.closed.result()
            unacked = len(link.unacked)
            raise ConnectionError(f"connection closed ({lost or 'by the broker'}); {unacked} publishes unacknowledged")
        finally:
            self._link = None
            self.connected.clear()
            link.close()

    async def _keep_alive(self, link: _Link) -> None:
        """PINGREQ every half keepalive; a broker silent for a whole keepalive after one is gone."""
        interval = self.keepalive / 2
        while True:
            # asyncio.wait, not wait_for: Python 3.11's wait_for loses a cancellation that meets the connection's end.
            await asyncio.wait([link.closed], timeout=interval)
            if link.closed.done():
                return
            if time.monotonic() - link.heard > self.keepalive + interval:
                link.close()
                raise TimeoutError(f"the broker answered nothing for {self.keepalive + interval:g} s")
            assert link.transport is not None
            link.transport.write(packets.PINGREQ_PACKET)

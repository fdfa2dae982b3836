"""A publish-only MQTT 3.1.1 connection for bursts (the scheduler's backups and run events): a batch is one write.

A general client cannot carry a burst: aiomqtt's ``publish`` waits for each acknowledgement
and walks every pending call on each call, and paho under it walks every
unacknowledged message on each PUBACK once an in-flight window is set, so
10,000 backups due in one second took seconds.  A connection that only
publishes needs little of the protocol: CONNECT/CONNACK, PUBLISH/PUBACK and
PINGREQ/PINGRESP, on the shared :class:`~nodefleet.wire.link.Link` and the one
reconnect policy.  A QoS 1 batch comes back as a future that is done once the
broker acknowledged every message of it, or fails with
:class:`~nodefleet.errors.NotSent` if the connection closed first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from ..backoff import Backoff
from ..errors import ConnectionLost, NotSent, ProtocolError
from ..logging import get_logger
from . import packets
from .address import BrokerAddress
from .link import Link, open_link
from .reconnect import Reconnect

log = get_logger(__name__)

MAX_UNACKED = 60_000  # packet ids are 16 bits; keep a margin so finding a free one stays quick
CONNECT_TIMEOUT = 10.0


class _Batch:
    """The QoS 1 messages of one ``publish`` call the broker has not acknowledged yet."""

    __slots__ = ("acked", "remaining")

    def __init__(self, size: int, acked: asyncio.Future[None]) -> None:
        self.remaining = size
        self.acked = acked


class _Link(Link):
    """One connection: reads CONNACK, PUBACKs and PINGRESPs; anything else closes it."""

    def __init__(self) -> None:
        super().__init__()
        self.unacked: dict[int, _Batch] = {}  # packet id -> its batch
        self._next_id = 0

    def connection_lost(self, exc: BaseException | None) -> None:
        lost = NotSent(f"the connection closed before the broker acknowledged them ({exc or 'closed'})")
        for batch in {id(b): b for b in self.unacked.values()}.values():
            if not batch.acked.done():
                batch.acked.set_exception(lost)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.heard = time.monotonic()
        try:
            for first, body in self.reader.feed(data):
                kind = first & 0xF0
                if kind == packets.PUBACK and len(body) == 2:
                    batch = self.unacked.pop(body[0] << 8 | body[1], None)
                    if batch is not None:
                        batch.remaining -= 1
                        if not batch.remaining and not batch.acked.done():
                            batch.acked.set_result(None)
                elif kind == packets.CONNACK:
                    self.on_connack(body)
                elif kind != packets.PINGRESP:
                    log.warning("publisher_unexpected_packet", kind=kind >> 4, length=len(body))
                    self.close()
                    return
        except ProtocolError as exc:
            log.warning("publisher_bad_stream", error=str(exc))
            self.close()

    def send(self, messages: Sequence[tuple[str, bytes]], qos: int) -> asyncio.Future[None]:
        transport = self.transport
        if transport is None or transport.is_closing() or not self.connack.done():
            raise NotSent("not connected to the broker")
        if qos and len(self.unacked) + len(messages) > MAX_UNACKED:
            raise NotSent(f"{len(self.unacked)} publishes not acknowledged by the broker yet")
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
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

    def __init__(self, address: BrokerAddress, *, client_id: str, keepalive: int = 30,
                 backoff: Backoff | None = None) -> None:
        self.address = address
        self.client_id = client_id
        self.keepalive = keepalive
        self.reconnect = Reconnect(address, event="publisher_connection_lost", backoff=backoff)
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
        return self._link.send(messages, qos)

    async def run(self) -> None:
        """Connect, keep alive, reconnect (``reconnect``'s policy); until cancelled."""
        await self.reconnect.run(self._connection, down=self._down)

    def _down(self) -> None:
        link, self._link = self._link, None
        self.connected.clear()
        if link is not None:
            link.close()

    async def _connection(self) -> None:
        # Clean session, no will: the service's main session carries the last will.
        link, _ = await open_link(self.address, _Link, client_id=self.client_id, clean_session=True,
                                  keepalive=self.keepalive, timeout=CONNECT_TIMEOUT)
        self._link = link
        self.connected.set()
        self.reconnect.up()
        try:
            await link.keep_alive(self.keepalive)
        except ConnectionLost as exc:
            raise ConnectionLost(f"{exc}; {len(link.unacked)} publishes unacknowledged") from exc

"""An asyncio MQTT 3.1.1 subscriber that acknowledges QoS 1 messages only when told.

The caller takes messages in batches (:meth:`AckingSubscriber.batch`), stores
them, then calls :meth:`AckingSubscriber.ack`.  Nothing is acknowledged on
receipt, so a crash before the commit leaves the messages with the broker,
which redelivers them to the same persistent session (same client id,
clean_session=0).  When the buffer holds ``buffer_limit`` messages the socket
is no longer read: the broker keeps queueing, and memory stays bounded.
Connection loss is handled inside :meth:`run` (the one reconnect policy,
:class:`~nodefleet.wire.reconnect.Reconnect`); messages of a lost connection
cannot be acknowledged any more and will come again, so the caller must
store idempotently.

Why not paho with ``manual_ack=True``: it can hold acknowledgements back too,
but it is slower.  Measured on the same load (``bench/telemetry_ingest.py``,
its ``paho_manual_ack_msgs_per_s``), paho that only counts receives about
38,000-40,000 msg/s, while the telemetry service with this subscriber decodes
and stores 66,000-67,000 rows/s: paho spends a callback and a message object
per PUBLISH and reads each packet in several system calls.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from ..backoff import Backoff
from ..errors import BrokerRefused, ProtocolError
from ..logging import get_logger
from . import packets
from .address import BrokerAddress
from .link import Link, open_link
from .reconnect import Reconnect

log = get_logger(__name__)


@dataclass(slots=True)
class Inbound:
    """One received PUBLISH; ``link`` names the connection it came on."""

    topic: str
    payload: bytes
    received: float
    packet_id: int
    link: int


class _Link(Link):
    """One connection; parses PUBLISHes straight into the subscriber's buffer."""

    def __init__(self, owner: AckingSubscriber, number: int) -> None:
        super().__init__()
        self.owner = owner
        self.number = number
        self.suback: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        # Not paused before SUBACK: a full buffer must not keep us from reading the broker's answer.
        self.subscribed = False
        self.leaving = False

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.heard = time.monotonic()
        buffer = self.owner._buffer
        parse = packets.parse_publish
        try:
            for first, body in self.reader.feed(data):
                kind = first & 0xF0
                if self.leaving:
                    continue
                if kind == packets.PUBLISH:
                    topic, payload, qos, packet_id = parse(first, body)
                    if qos == 2:
                        # We subscribe with QoS 1; a QoS 2 delivery is acknowledged at once (PUBREC).
                        self.transport.write(packets.pubrec(packet_id))  # type: ignore[union-attr]
                        packet_id = 0
                    buffer.append(Inbound(topic, payload, now, packet_id, self.number))
                elif kind == packets.PUBREL:
                    self.transport.write(packets.pubcomp((body[0] << 8) | body[1]))  # type: ignore[union-attr]
                elif kind == packets.CONNACK:
                    self.on_connack(body)
                elif kind == packets.SUBACK and not self.suback.done():
                    self.suback.set_result(body[2:])
        except (ProtocolError, IndexError) as exc:
            log.warning("mqtt_protocol_error", error=str(exc))
            self.transport.abort()  # type: ignore[union-attr]
            return
        if buffer:
            self.owner._data.set()
            if self.subscribed and len(buffer) >= self.owner.buffer_limit and self.pause():
                self.owner.pauses += 1


class Batches:
    """The buffer every ingest subscriber fills and :meth:`batch` empties; ``buffer_limit`` bounds it.

    A subclass fills ``_buffer`` (and sets ``_data``), stops taking more at ``buffer_limit``, and
    starts again in :meth:`_drained`, called when a batch leaves half the limit or less.
    """

    def __init__(self, buffer_limit: int) -> None:
        self.buffer_limit = buffer_limit
        self.subscribed = asyncio.Event()
        self.connections = 0
        self.pauses = 0
        self.acked = 0
        self._buffer: deque[Inbound] = deque()
        self._data = asyncio.Event()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _drained(self) -> None:
        """The buffer is at half its limit or below: take more."""

    async def batch(self, max_items: int, max_wait: float, *, idle_gap: float = 0.01) -> list[Inbound]:
        """Wait for at least one message, then up to ``max_wait`` s for ``max_items``; return them.

        The wait also ends when nothing arrived for ``idle_gap`` s: a broker that
        holds back deliveries until earlier ones are acknowledged (a small
        in-flight window) would otherwise cost ``max_wait`` per window.
        """
        buffer = self._buffer
        while not buffer:
            self._data.clear()
            await self._data.wait()
        if len(buffer) < max_items and max_wait > 0:
            deadline = time.monotonic() + max_wait
            while len(buffer) < max_items:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._data.clear()
                try:
                    await asyncio.wait_for(self._data.wait(), min(remaining, idle_gap))
                except TimeoutError:
                    break
        count = min(max_items, len(buffer))
        taken = [buffer.popleft() for _ in range(count)]
        if len(buffer) <= self.buffer_limit // 2:
            self._drained()
        return taken


class AckingSubscriber(Batches):
    """Subscribes ``filters`` with a persistent session and hands out batches."""

    def __init__(
        self,
        address: BrokerAddress,
        *,
        client_id: str,
        filters: list[str],
        qos: int = 1,
        clean_session: bool = False,
        keepalive: int = 30,
        buffer_limit: int = 20_000,
        connect_timeout: float = 10.0,
        max_backoff: float = 10.0,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(buffer_limit)
        self.address = address
        self.client_id = client_id
        self.filters = filters
        self.qos = qos
        self.clean_session = clean_session
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.reconnect = Reconnect(address, event="mqtt_connection_lost", failed_event="mqtt_connect_failed",
                                   backoff=backoff or Backoff(most=max_backoff))
        self._link: _Link | None = None

    async def run(self) -> None:
        """Connect, subscribe and keep the link alive; reconnect (``reconnect``'s policy) until cancelled."""
        await self.reconnect.run(self._session, down=self._down)

    def _down(self) -> None:
        self.subscribed.clear()
        link, self._link = self._link, None
        if link is not None:
            link.abort()

    async def _session(self) -> None:
        self.connections += 1
        number = self.connections
        link, session_present = await open_link(
            self.address, lambda: _Link(self, number), client_id=self.client_id, clean_session=self.clean_session,
            keepalive=self.keepalive, timeout=self.connect_timeout)
        self._link = link
        try:
            link.write(packets.subscribe(1, [(f, self.qos) for f in self.filters]))
            granted = await link.answer(link.suback, "SUBACK", self.connect_timeout)
            if any(code == 0x80 for code in granted):
                raise BrokerRefused(f"broker refused a subscription among {self.filters}")
            log.info("mqtt_subscribed", broker=self.address.url, client_id=self.client_id,
                     session_present=session_present, filters=len(self.filters))
            link.subscribed = True
            if len(self._buffer) >= self.buffer_limit and link.pause():
                self.pauses += 1
            self.subscribed.set()
            self.reconnect.up()
            await link.keep_alive(self.keepalive)
        except asyncio.CancelledError:
            await self.disconnect()
            raise

    def _drained(self) -> None:
        link = self._link
        if link is not None and link.paused:
            link.resume()

    def ack(self, messages: Iterable[Inbound]) -> int:
        """Send PUBACK for the QoS 1 messages of the current connection; return how many."""
        link = self._link
        if link is None or link.transport is None or link.transport.is_closing():
            return 0
        number = link.number
        ids = [m.packet_id for m in messages if m.packet_id and m.link == number]
        if ids:
            link.transport.write(packets.pubacks(ids))
            self.acked += len(ids)
        return len(ids)

    async def disconnect(self, timeout: float = 1.0) -> None:
        """Say goodbye politely, so the last PUBACKs reach the broker (the session stays there)."""
        link = self._link
        if link is None or link.transport is None or link.transport.is_closing():
            return
        link.leaving = True
        link.transport.write(packets.DISCONNECT_PACKET)
        # Closing with unread input would reset the connection, and the broker would
        # drop our last PUBACKs unread: half-close, read until the broker closes.
        link.resume()
        if link.transport.can_write_eof():
            link.transport.write_eof()
        await asyncio.wait([link.closed], timeout=timeout)
        link.transport.close()

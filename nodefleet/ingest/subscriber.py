"""An asyncio MQTT 3.1.1 subscriber that acknowledges QoS 1 messages only when told.

The caller takes messages in batches (:meth:`AckingSubscriber.batch`), stores
them, then calls :meth:`AckingSubscriber.ack`.  Nothing is acknowledged on
receipt, so a crash before the commit leaves the messages with the broker,
which redelivers them to the same persistent session (same client id,
clean_session=0).  When the buffer holds ``buffer_limit`` messages the socket
is no longer read: the broker keeps queueing, and memory stays bounded.
Connection loss is handled inside :meth:`run` (reconnect with backoff);
messages of a lost connection cannot be acknowledged any more and will come
again, so the caller must store idempotently.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from ..backoff import Backoff
from ..logging import get_logger
from ..mqtt import BrokerAddress
from .. import mqtt_packets as packets
from ..mqtt_packets import ProtocolError

log = get_logger(__name__)


class ConnectionRefused(RuntimeError):
    """The broker answered CONNECT or SUBSCRIBE with a refusal."""


@dataclass(slots=True)
class Inbound:
    """One received PUBLISH; ``link`` names the connection it came on."""

    topic: str
    payload: bytes
    received: float
    packet_id: int
    link: int


class _Link(asyncio.Protocol):
    """One TCP connection; parses packets and hands them to the subscriber."""

    def __init__(self, owner: AckingSubscriber, number: int) -> None:
        self.owner = owner
        self.number = number
        self.reader = packets.PacketReader()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.connack: asyncio.Future[tuple[bool, int]] = asyncio.get_running_loop().create_future()
        self.suback: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.last_received = time.monotonic()
        self.paused = False
        # Not paused before SUBACK: a full buffer must not keep us from reading the broker's answer.
        self.subscribed = False
        self.leaving = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.last_received = time.monotonic()
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
                elif kind == packets.CONNACK and not self.connack.done():
                    self.connack.set_result((bool(body[0] & 1), body[1]))
                elif kind == packets.SUBACK and not self.suback.done():
                    self.suback.set_result(body[2:])
        except (ProtocolError, IndexError) as exc:
            log.warning("mqtt_protocol_error", error=str(exc))
            self.transport.abort()  # type: ignore[union-attr]
            return
        if buffer:
            self.owner._data.set()
            if self.subscribed and len(buffer) >= self.owner.buffer_limit:
                self.pause()

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.paused = True
            self.transport.pause_reading()
            self.owner.pauses += 1

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.transport.is_closing():
            self.paused = False
            # Silence while paused was ours, not the broker's.
            self.last_received = time.monotonic()
            self.transport.resume_reading()


class AckingSubscriber:
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
    ) -> None:
        self.address = address
        self.client_id = client_id
        self.filters = filters
        self.qos = qos
        self.clean_session = clean_session
        self.keepalive = keepalive
        self.buffer_limit = buffer_limit
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self.subscribed = asyncio.Event()
        self.connections = 0
        self.pauses = 0
        self.acked = 0
        self._buffer: deque[Inbound] = deque()
        self._data = asyncio.Event()
        self._link: _Link | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def run(self) -> None:
        """Connect, subscribe and keep the link alive; reconnect with backoff until cancelled."""
        backoff = Backoff(most=self.max_backoff)
        while True:
            backoff.attempt()
            try:
                await self._session()
                log.warning("mqtt_connection_lost", broker=self.address.url)
            except asyncio.CancelledError:
                await self.disconnect()
                raise
            except (OSError, TimeoutError, ProtocolError, ConnectionRefused) as exc:
                log.warning("mqtt_connect_failed", broker=self.address.url, error=str(exc) or type(exc).__name__,
                            retry_in=round(backoff.next_pause, 2))
            finally:
                self.subscribed.clear()
                link, self._link = self._link, None
                if link is not None and link.transport is not None:
                    link.transport.abort()
            await backoff.wait()

    async def _session(self) -> None:
        loop = asyncio.get_running_loop()
        self.connections += 1
        number = self.connections
        _, link = await asyncio.wait_for(
            loop.create_connection(lambda: _Link(self, number), self.address.host, self.address.port),
            self.connect_timeout,
        )
        self._link = link
        link.transport.write(packets.connect(  # type: ignore[union-attr]
            self.client_id, clean_session=self.clean_session, keepalive=self.keepalive,
            username=self.address.username, password=self.address.password,
        ))
        session_present, code = await self._answer(link, link.connack, "CONNACK")
        if code:
            raise ConnectionRefused(f"broker refused the connection: {packets.CONNACK_REASONS.get(code, code)}")
        link.transport.write(packets.subscribe(1, [(f, self.qos) for f in self.filters]))  # type: ignore[union-attr]
        granted = await self._answer(link, link.suback, "SUBACK")
        if any(code == 0x80 for code in granted):
            raise ConnectionRefused(f"broker refused a subscription among {self.filters}")
        log.info("mqtt_subscribed", broker=self.address.url, client_id=self.client_id,
                 session_present=session_present, filters=len(self.filters))
        link.subscribed = True
        if len(self._buffer) >= self.buffer_limit:
            link.pause()
        self.subscribed.set()
        await self._keep_alive(link)

    async def _answer(self, link: _Link, answer: asyncio.Future, what: str):
        """The broker's answer, or an error as soon as the connection closes or the time is up."""
        await asyncio.wait({answer, link.closed}, timeout=self.connect_timeout, return_when=asyncio.FIRST_COMPLETED)
        if answer.done():
            return answer.result()
        if link.closed.done():
            raise ConnectionError(f"the broker closed the connection before its {what}")
        raise TimeoutError(f"no {what} from the broker within {self.connect_timeout:g} s")

    async def _keep_alive(self, link: _Link) -> None:
        interval = max(self.keepalive / 2, 0.5)
        while not link.closed.done():
            await asyncio.wait([link.closed], timeout=interval)
            if link.closed.done():
                return
            # While paused we cannot read PINGRESP, so only an unpaused link is judged by silence.
            if not link.paused and time.monotonic() - link.last_received > self.keepalive * 1.5:
                log.warning("mqtt_keepalive_timeout", broker=self.address.url)
                return
            link.transport.write(packets.PINGREQ_PACKET)  # type: ignore[union-attr]

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
        link = self._link
        if link is not None and link.paused and len(buffer) <= self.buffer_limit // 2:
            link.resume()
        return taken

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

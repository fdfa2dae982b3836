"""One MQTT 3.1.1 connection of our own clients: connect, CONNACK, keepalive, close.

The acking subscriber and the fast publisher are subclasses of :class:`Link`
that read their own packets in ``data_received`` (their hot loops); this
module does what both need: open the TCP connection and log in
(:func:`open_link`), wait for an answer or the connection's end
(:meth:`Link.answer`) and keep the connection alive (:meth:`Link.keep_alive`).
OS errors and timeouts become :mod:`nodefleet.errors`' wire errors here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import BrokerRefused, BrokerUnavailable, ConnectionLost
from . import packets
from .address import BrokerAddress, unreachable

L = TypeVar("L", bound="Link")


class Link(asyncio.Protocol):
    """A TCP connection to the broker; ``heard`` is when it last sent anything, ``paused`` while we stopped reading."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[tuple[bool, int]] = loop.create_future()
        self.closed: asyncio.Future[BaseException | None] = loop.create_future()
        self.reader = packets.PacketReader()
        self.heard = time.monotonic()
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)

    def on_connack(self, body: bytes) -> None:
        if not self.connack.done() and len(body) == 2:
            self.connack.set_result((bool(body[0] & 1), body[1]))

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def pause(self) -> bool:
        """Stop reading the socket (the broker keeps what we do not read); True if it was reading."""
        if self.paused or not self.open:
            return False
        self.paused = True
        self.transport.pause_reading()  # type: ignore[union-attr]
        return True

    def resume(self) -> None:
        if self.paused and self.open:
            self.paused = False
            # Silence while paused was ours, not the broker's.
            self.heard = time.monotonic()
            self.transport.resume_reading()  # type: ignore[union-attr]

    async def answer(self, answer: asyncio.Future[Any], what: str, timeout: float) -> Any:
        """The broker's answer, or a wire error as soon as the connection closes or the time is up."""
        await asyncio.wait({answer, self.closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if answer.done():
            return answer.result()
        if self.closed.done():
            raise ConnectionLost(f"the broker closed the connection before its {what}")
        raise BrokerUnavailable(f"no {what} from the broker within {timeout:g} s")

    async def keep_alive(self, keepalive: int) -> None:
        """PINGREQ every half keepalive; raises ConnectionLost when the connection closes, or when the broker
        was silent for 1.5 keepalives while we were reading (then the connection is aborted)."""
        interval = max(keepalive / 2, 0.5)
        while True:
            # asyncio.wait, not wait_for: Python 3.11's wait_for loses a cancellation that meets the connection's end.
            await asyncio.wait([self.closed], timeout=interval)
            if self.closed.done():
                raise ConnectionLost(f"the connection closed ({self.closed.result() or 'by the broker'})")
            if not self.paused and time.monotonic() - self.heard > keepalive * 1.5:
                self.abort()
                raise ConnectionLost(f"the broker answered nothing for {keepalive * 1.5:g} s")
            self.write(packets.PINGREQ_PACKET)


async def open_link(
    address: BrokerAddress, factory: Callable[[], L], *, client_id: str, clean_session: bool, keepalive: int,
    timeout: float = 10.0,
) -> tuple[L, bool]:
    """Connect and log in: the link and whether the broker had a session for us.

    BrokerUnavailable if the broker cannot be reached or does not answer within ``timeout``,
    ConnectionLost if it hangs up first, BrokerRefused if it refuses the login.
    """
    loop = asyncio.get_running_loop()
    try:
        context = address.ssl_context()
        _, link = await asyncio.wait_for(loop.create_connection(
            factory, address.host, address.port, ssl=context,
            server_hostname=address.host if context is not None else None), timeout)
    except TimeoutError as exc:
        raise BrokerUnavailable(f"no connection to the broker at {address.url} within {timeout:g} s") from exc
    except OSError as exc:
        raise BrokerUnavailable(unreachable(address, exc)) from exc
    try:
        link.write(packets.connect(client_id, clean_session=clean_session, keepalive=keepalive,
                                   username=address.username, password=address.password))
        session_present, code = await link.answer(link.connack, "CONNACK", timeout)
        if code:
            raise BrokerRefused.connack(code)
    except BaseException:
        link.abort()
        raise
    return link, session_present

"""One place that turns settings into MQTT connections (MQTT 3.1.1 everywhere)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aiomqtt


class BrokerUrlError(ValueError):
    """A broker URL nodefleet cannot use."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse ``mqtt://[user:password@]host[:port]``."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "tcp"):
            raise BrokerUrlError(f"unsupported broker URL scheme {parts.scheme!r} in {url!r}: use mqtt://host:port")
        if not parts.hostname:
            raise BrokerUrlError(f"broker URL {url!r} names no host: use mqtt://host:port")
        try:
            port = parts.port or 1883
        except ValueError as exc:
            raise BrokerUrlError(f"broker URL {url!r} has a bad port") from exc
        return cls(
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    @property
    def url(self) -> str:
        """The URL without the password, for logs and banners."""
        user = f"{self.username}@" if self.username else ""
        return f"mqtt://{user}{self.host}:{self.port}"


def client(
    address: BrokerAddress,
    *,
    client_id: str,
    clean_session: bool = True,
    will: aiomqtt.Will | None = None,
    keepalive: int = 30,
    max_queued_outgoing: int | None = None,
    nodelay: bool = False,
    max_inflight: int | None = None,
) -> aiomqtt.Client:
    """An aiomqtt client for ``address`` speaking MQTT 3.1.1.

    ``nodelay`` turns Nagle's algorithm off: a request/reply client otherwise waits for
    delayed ACKs (about 40 ms) whenever two small packets follow each other.
    ``max_inflight`` raises paho's window of unacknowledged QoS 1 publishes (20).
    """
    return aiomqtt.Client(
        address.host,
        address.port,
        username=address.username,
        password=address.password,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=clean_session,
        will=will,
        keepalive=keepalive,
        max_queued_outgoing_messages=max_queued_outgoing,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)] if nodelay else None,
        max_inflight_messages=max_inflight,
    )

"""The few MQTT 3.1.1 packets our own clients need, encoded and decoded.

Two clients of our own speak MQTT without a library, both on
:mod:`nodefleet.wire.link`: the acking subscriber (sends CONNECT, SUBSCRIBE,
PUBACK, PINGREQ, DISCONNECT; receives CONNACK, SUBACK, PUBLISH, PINGRESP) and
the fast publisher (sends CONNECT, PUBLISH, PINGREQ; receives CONNACK,
PUBACK, PINGRESP).  :class:`PacketReader` splits a byte stream into packets
without copying more than each packet's own bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from ..errors import ProtocolError

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
PUBREC = 0x50
PUBREL = 0x60
PUBCOMP = 0x70
SUBSCRIBE = 0x80
SUBACK = 0x90
PINGREQ = 0xC0
PINGRESP = 0xD0
DISCONNECT = 0xE0

MAX_PACKET = 268_435_455
"""Largest remaining length MQTT can express."""

PINGREQ_PACKET = bytes((PINGREQ, 0))
DISCONNECT_PACKET = bytes((DISCONNECT, 0))
_PUBACK = struct.Struct(">BBH")


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _length(len(body)) + body


def connect(
    client_id: str, *, clean_session: bool, keepalive: int, username: str | None = None, password: str | None = None
) -> bytes:
    flags = (0x02 if clean_session else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = _string("MQTT") + bytes((4, flags)) + struct.pack(">H", keepalive) + _string(client_id)
    if username is not None:
        body += _string(username)
    if password is not None:
        body += _string(password)
    return _packet(CONNECT, body)


def publish(topic: bytes, payload: bytes, qos: int, packet_id: int = 0) -> bytes:
    """A PUBLISH (not retained, not a duplicate); ``packet_id`` only for QoS 1 and 2."""
    head = struct.pack(">H", len(topic)) + topic + (struct.pack(">H", packet_id) if qos else b"")
    return bytes((PUBLISH | qos << 1,)) + _length(len(head) + len(payload)) + head + payload


def subscribe(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    body = struct.pack(">H", packet_id) + b"".join(_string(f) + bytes((qos,)) for f, qos in filters)
    return _packet(SUBSCRIBE | 0x02, body)


def puback(packet_id: int) -> bytes:
    return _PUBACK.pack(PUBACK, 2, packet_id)


def pubacks(packet_ids: list[int]) -> bytes:
    """Many PUBACKs in one buffer, for one socket write per batch."""
    return b"".join([_PUBACK.pack(PUBACK, 2, pid) for pid in packet_ids])


def pubcomp(packet_id: int) -> bytes:
    return _PUBACK.pack(PUBCOMP, 2, packet_id)


def pubrec(packet_id: int) -> bytes:
    return _PUBACK.pack(PUBREC, 2, packet_id)


class PacketReader:
    """Accumulates received bytes and yields whole packets as (first byte, body)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        buffer = self._buffer
        buffer += data
        size = len(buffer)
        pos = 0
        while size - pos >= 2:
            first = buffer[pos]
            # Remaining length: 1-4 bytes, 7 bits each.
            length = 0
            shift = 0
            i = pos + 1
            while True:
                if i >= size:
                    del buffer[:pos]
                    return
                byte = buffer[i]
                length |= (byte & 0x7F) << shift
                i += 1
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise ProtocolError("remaining length longer than 4 bytes")
            end = i + length
            if end > size:
                break
            yield first, bytes(buffer[i:end])
            pos = end
        del buffer[:pos]


def parse_publish(first: int, body: bytes) -> tuple[str, bytes, int, int]:
    """Topic, payload, QoS and packet id (0 for QoS 0) of a PUBLISH."""
    qos = (first >> 1) & 0x03
    topic_end = 2 + ((body[0] << 8) | body[1])
    # A broken topic is the caller's bad input to reject and acknowledge, not a reason to drop the link.
    topic = body[2:topic_end].decode(errors="replace")
    if qos:
        packet_id = (body[topic_end] << 8) | body[topic_end + 1]
        return topic, body[topic_end + 2 :], qos, packet_id
    return topic, body[topic_end:], 0, 0

# MQTT 3.1.1 packets over asyncio streams: the protocol layer raises, link.py reconnects.
import struct

CONNECT = 0x10
PUBLISH = 0x30
PUBACK = 0x40
SUBSCRIBE = 0x82
SUBACK = 0x90
PINGREQ = 0xC0
PINGRESP = 0xD0
DISCONNECT = 0xE0
_REFUSED = ("", "protocol version", "client id", "server unavailable",
            "bad username or password: check them with POST /api/mqtt",
            "not authorised: check the node's MQTT username and password")


class MQTTError(Exception):
    pass


def _s(b):
    if isinstance(b, str):
        b = b.encode()
    return struct.pack("!H", len(b)) + b


def _varlen(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return out


class Proto:
    def __init__(self, reader, writer, buf):
        self.r = reader
        self.w = writer
        self.mv = memoryview(buf)
        try:
            # TCP_NODELAY: an ack must not wait for the broker's delayed ACK of the previous segment.
            writer.s.setsockopt(6, 1, 1)
        except (AttributeError, OSError):
            pass

    def put(self, head, *parts):
        # Buffered only: the caller drains once per batch, so small packets share one TCP segment.
        self.w.write(bytes([head]) + _varlen(sum(len(p) for p in parts)))
        for p in parts:
            self.w.write(p)

    async def send(self, head, *parts):
        self.put(head, *parts)
        await self.w.drain()

    async def connect(self, client_id, keepalive, user=None, password=None, will=None, clean=True):
        """CONNECT and its CONNACK; returns whether the broker kept a session for client_id."""
        flags = 0x02 if clean else 0
        body = _s(client_id)
        if will:
            flags |= 0x04 | (0x20 if will[2] else 0) | (will[3] << 3)
            body += _s(will[0]) + _s(will[1])
        if user:
            flags |= 0x80
            body += _s(user)
            if password:
                flags |= 0x40
                body += _s(password)
        await self.send(CONNECT, b"\x00\x04MQTT\x04" + bytes([flags]) + struct.pack("!H", keepalive), body)
        head, data = await self.read()
        if head != 0x20 or len(data) != 2:
            raise MQTTError("no CONNACK")
        if data[1]:
            code = data[1]
            raise MQTTError("broker refused: %s" % (_REFUSED[code] if code < len(_REFUSED) else code))
        return bool(data[0] & 1)

    def put_publish(self, topic, payload, retain=False, qos=0, pid=0, dup=False):
        head = PUBLISH | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
        t = _s(topic)
        if qos:
            t += struct.pack("!H", pid)
        self.put(head, t, payload)

    def put_puback(self, pid):
        self.put(PUBACK, struct.pack("!H", pid))

    async def drain(self):
        await self.w.drain()

    async def subscribe(self, pid, filters):
        # filters: [(filter, qos), ...]; OTA frames are subscribed at QoS 0 (docs/ota.md)
        body = bytearray(struct.pack("!H", pid))
        for f, qos in filters:
            body += _s(f) + bytes([qos])
        await self.send(SUBSCRIBE, body)

    async def ping(self):
        await self.send(PINGREQ)

    async def _fill(self, mv):
        # Into the preallocated buffer: a large body never becomes a new object on the heap.
        got = 0
        while got < len(mv):
            n = await self.r.readinto(mv[got:])
            if n is None:
                continue  # over TLS: a record without application data (a session ticket); wait for the next
            if not n:
                raise MQTTError("connection closed")
            got += n

    async def read(self):
        """One packet: (header byte, body as a view of the receive buffer, valid until the next read).

        A PUBLISH too big for the buffer is skipped in buffer-sized pieces: (header, (topic, size, pid)).
        """
        mv = self.mv
        await self._fill(mv[:1])
        head = mv[0]
        n = 0
        shift = 0
        while True:
            await self._fill(mv[:1])
            byte = mv[0]
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
            if shift > 21:
                raise MQTTError("bad remaining length")
        if n <= len(mv):
            await self._fill(mv[:n])
            return head, mv[:n]
        if head & 0xF0 != PUBLISH:
            raise MQTTError("packet 0x%02x of %d bytes: too big" % (head, n))
        await self._fill(mv[:2])
        tlen = struct.unpack_from("!H", mv)[0]
        if tlen > 256:
            raise MQTTError("topic of %d bytes" % tlen)
        await self._fill(mv[:tlen])
        topic = bytes(mv[:tlen])
        left = n - 2 - tlen
        pid = 0
        if (head >> 1) & 3:
            await self._fill(mv[:2])
            pid = struct.unpack_from("!H", mv)[0]
            left -= 2
        while left > 0:
            k = min(left, len(mv))
            await self._fill(mv[:k])
            left -= k
        return head, (topic, n, pid)


def parse_publish(head, body):
    """(topic bytes, payload view, qos, pid) of a PUBLISH body; only the short topic is copied."""
    tlen = struct.unpack_from("!H", body)[0]
    topic = bytes(body[2 : 2 + tlen])
    i = 2 + tlen
    qos = (head >> 1) & 3
    pid = 0
    if qos:
        pid = struct.unpack_from("!H", body, i)[0]
        i += 2
    return topic, body[i:], qos, pid

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
    def __init__(self, reader, writer):
        self.r = reader
        self.w = writer
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

    async def connect(self, client_id, keepalive, user=None, password=None, will=None):
        flags = 0x02
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
        head, data = await self.read(8)
        if head != 0x20 or len(data) != 2:
            raise MQTTError("no CONNACK")
        if data[1]:
            code = data[1]
            raise MQTTError("broker refused: %s" % (_REFUSED[code] if code < len(_REFUSED) else code))

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

    async def subscribe(self, pid, filters, qos=1):
        body = bytearray(struct.pack("!H", pid))
        for f in filters:
            body += _s(f) + bytes([qos])
        await self.send(SUBSCRIBE, body)

    async def ping(self):
        await self.send(PINGREQ)

    async def disconnect(self):
        await self.send(DISCONNECT)

    async def read(self, max_in):
        """One packet: (header byte, body); a body over max_in is skipped: (topic, size, pid)."""
        head = (await self.r.readexactly(1))[0]
        n = 0
        shift = 0
        while True:
            byte = (await self.r.readexactly(1))[0]
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
            if shift > 21:
                raise MQTTError("bad remaining length")
        if n <= max_in:
            return head, (await self.r.readexactly(n)) if n else b""
        # Too big for this heap: keep only the topic, read the rest in small pieces and drop it.
        tlen = struct.unpack("!H", await self.r.readexactly(2))[0]
        topic = await self.r.readexactly(tlen)
        left = n - 2 - tlen
        pid = 0
        if (head >> 1) & 3:
            pid = struct.unpack("!H", await self.r.readexactly(2))[0]
            left -= 2
        while left > 0:
            chunk = await self.r.read(min(left, 512))
            if not chunk:
                raise MQTTError("connection closed")
            left -= len(chunk)
        return head, (topic, n, pid)


def parse_publish(head, body):
    """(topic bytes, payload bytes, qos, pid) of a PUBLISH body."""
    tlen = struct.unpack("!H", body[:2])[0]
    topic = body[2 : 2 + tlen]
    i = 2 + tlen
    qos = (head >> 1) & 3
    pid = 0
    if qos:
        pid = struct.unpack("!H", body[i : i + 2])[0]
        i += 2
    return topic, body[i:], qos, pid

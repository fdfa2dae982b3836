# Connectivity over mqtt.Proto: reconnect with backoff and jitter, resubscribe, a bounded queue.
import asyncio
import random
import time

import hal
import heap
from mqtt import DISCONNECT, PINGRESP, PUBACK, PUBLISH, SUBACK, MQTTError, Proto, parse_publish

WINDOW = 2  # QoS 1 messages in flight at once: each one stays on the heap until its PUBACK
ENTRY = 96  # what a queued message costs on the heap beside its payload (list, bytes header, callback)


class Link:
    def __init__(self, *, host, port, client_id, subs, will, on_msg, on_up, on_down, on_refused=None,
                 user=None, password=None, keepalive=60, max_queue=24, max_queue_bytes=1536, max_in=heap.MAX_IN,
                 max_backoff=60, stale_after=60):
        # stale_after: commands.TTL, the life of a command without sent or expires (not imported: the download
        # modes load commands only while one acts).
        self.host = host
        self.port = port
        self.client_id = client_id
        self.subs = subs  # [(filter, qos), ...], subscribed at every connect
        self.will = will
        self.on_msg = on_msg
        self.on_up = on_up
        self.on_down = on_down
        self.on_refused = on_refused
        self.user = user
        self.password = password
        self.keepalive = keepalive
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes  # heap held by waiting messages: a flood of acks must not eat it
        self.max_in = max_in
        self.max_backoff = max_backoff
        self.stale_after = stale_after
        # True from a CONNACK that resumed the session after an outage longer than stale_after (or a reboot)
        # until the SUBACK: what arrives in between is what the broker held for the node.
        self.replaying = False
        self._down_at = None
        heap.reserve()  # app.py has done so at boot, while the heap was whole
        self.buf = heap.RX  # every packet is read into it
        self.queue = []  # [topic, payload, retain, qos, key, on_acked]
        self.inflight = {}
        self._pubacks = []
        self.dropped = 0
        self.up = False
        self.connects = 0
        self._pid = 0
        self._ev = asyncio.Event()
        self._err = None
        # Set before a deep sleep (sleep.py): DISCONNECT once the queue is out and acknowledged, so the broker keeps
        # the last status instead of publishing the will; then no reconnect.
        self.closing = False

    def publish(self, topic, payload, retain=False, qos=0, key=None, on_acked=None):
        if key is not None:
            # Only the newest message of a key matters (e.g. retained state).
            for i, m in enumerate(self.queue):
                if m[4] == key:
                    self.queue.pop(i)
                    break
        size = len(payload) + ENTRY
        while self.queue and (len(self.queue) >= self.max_queue or
                              sum(len(m[1]) + ENTRY for m in self.queue) + size > self.max_queue_bytes):
            self.queue.pop(0)
            self.dropped += 1
        self.queue.append([topic, payload, retain, qos, key, on_acked])
        self._ev.set()

    def pending(self, key):
        """Whether a message of ``key`` waits in the queue or for its PUBACK."""
        for m in self.queue:
            if m[4] == key:
                return True
        for m in self.inflight.values():
            if m[4] == key:
                return True
        return False

    async def run(self):
        backoff = 1
        while True:
            if not hal.wifi_ok() or self.closing:
                # Short steps: the broker is tried within 50 ms of WiFi coming up (a restart into the
                # download mode waits on this twice: its WiFi, then its connect).
                await asyncio.sleep_ms(50)
                continue
            reason = None
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # whatever ended the session, the answer is to reconnect
                reason = str(exc).strip() or type(exc).__name__
            was_up = self.up
            if was_up:
                backoff = 1
                self._down_at = time.ticks_ms()
            self.up = False
            self.replaying = False
            self.on_down(reason, was_up)
            await asyncio.sleep_ms(int(backoff * 1000 * (0.5 + random.getrandbits(8) / 256)))
            backoff = min(backoff * 2, self.max_backoff)

    def _next_pid(self):
        self._pid = self._pid % 65535 + 1
        return self._pid

    async def _session(self):
        reader, writer = await asyncio.wait_for(hal.open_connection(self.host, self.port), 5)
        proto = Proto(reader, writer, self.buf)
        task = None
        try:
            # A persistent session: the broker keeps QoS 1 commands for the node through a short outage.
            # (Over TLS the handshake runs at this first write: a broker not trusted is mbedTLS's ValueError.)
            present = await asyncio.wait_for(
                proto.connect(self.client_id, self.keepalive, self.user, self.password, self.will, False), 5)
            self.replaying = present and (self._down_at is None or
                                          time.ticks_diff(time.ticks_ms(), self._down_at) > self.stale_after * 1000)
            self._err = None
            self._pubacks = []
            self._last_rx = time.ticks_ms()
            await proto.subscribe(self._next_pid(), self.subs)
            # Unacknowledged QoS 1 messages go out again first, marked DUP.
            for pid in sorted(self.inflight, reverse=True):
                self.queue.insert(0, self.inflight.pop(pid))
            task = asyncio.create_task(self._reader(proto))
            self.up = True
            self.connects += 1
            self.on_up()
            await self._writer(proto)
        finally:
            if task is not None:
                task.cancel()
            try:
                # On MicroPython only wait_closed() closes the socket.
                writer.close()
                await writer.wait_closed()
            except OSError:
                pass

    async def _writer(self, proto):
        last_tx = last_ping = time.ticks_ms()
        ping_ms = self.keepalive * 250
        while True:
            self._ev.clear()
            if self._err is not None:
                raise self._err
            if not hal.wifi_ok():
                raise MQTTError("wifi lost")
            wrote = False
            while self._pubacks:
                proto.put_puback(self._pubacks.pop(0))
                wrote = True
            i = 0
            while i < len(self.queue):
                m = self.queue[i]
                if m[3] and len(self.inflight) >= WINDOW:
                    i += 1  # QoS 0 (a want, telemetry) need no PUBACK: they go past, off the heap at once
                    continue
                self.queue.pop(i)
                pid = 0
                if m[3]:
                    pid = self._next_pid()
                    self.inflight[pid] = m
                proto.put_publish(m[0], m[1], m[2], m[3], pid, len(m) > 6)
                if m[3] and len(m) == 6:
                    m.append(True)  # any resend of this message carries DUP
                wrote = True
            if wrote:
                await proto.drain()
                last_tx = time.ticks_ms()
            if self.closing and not self.queue and not self.inflight:
                await proto.send(DISCONNECT)
                return
            now = time.ticks_ms()
            if time.ticks_diff(now, self._last_rx) > self.keepalive * 1500:
                raise MQTTError("keepalive timeout: no answer from broker")
            # A ping when nothing went out for a while, and also when nothing came in: QoS 0 traffic alone (frequent
            # telemetry) keeps the broker content but gets no answer, and this side would time out on silence.
            if time.ticks_diff(now, last_tx) >= ping_ms or (time.ticks_diff(now, self._last_rx) >= 2 * ping_ms and
                                                            time.ticks_diff(now, last_ping) >= ping_ms):
                await proto.ping()
                last_tx = last_ping = now
            if not self.queue or len(self.inflight) >= WINDOW:
                try:
                    await asyncio.wait_for_ms(self._ev.wait(), 250)
                except asyncio.TimeoutError:
                    pass

    async def _reader(self, proto):
        try:
            while True:
                head, body = await proto.read()
                self._last_rx = time.ticks_ms()
                kind = head & 0xF0
                if kind == PUBLISH:
                    if isinstance(body, tuple):
                        topic, size, pid = body
                        payload = None
                        qos = (head >> 1) & 3
                    else:
                        topic, payload, qos, pid = parse_publish(head, body)
                        size = len(payload)
                        if size > self.max_in:
                            payload = None
                    self.on_msg(topic, payload, size, head & 0x01)
                    if qos:
                        # Sent by the writer together with what the handler published.
                        self._pubacks.append(pid)
                        self._ev.set()
                elif kind == PUBACK:
                    m = self.inflight.pop((body[0] << 8) | body[1], None)
                    if m is not None and m[5] is not None:
                        m[5]()
                    if self.queue:
                        self._ev.set()  # a place in the window: the next QoS 1 message goes now, not in 250 ms
                elif kind == SUBACK:
                    self.replaying = False
                    refused = [self.subs[i][0] for i, code in enumerate(body[2:]) if code == 0x80 and i < len(self.subs)]
                    if refused and self.on_refused is not None:
                        # Not fatal: under a strict ACL the node still takes what it may read.
                        self.on_refused(refused)
                elif kind != PINGRESP:
                    raise MQTTError("unexpected packet 0x%02x" % head)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure ends this session; run() reconnects
            self._err = exc if isinstance(exc, (OSError, MQTTError, EOFError)) else MQTTError(repr(exc))
            self._ev.set()

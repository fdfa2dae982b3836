# The LAN upload of the download mode (docs/ota.md, "Over the LAN"): POST /api/ota in normal mode restarts the
# node into this mode, which then takes one upload file on its local port instead of the MQTT stream:
#   b"NFU1" | u32 offer length | offer (JSON, tagged by the ota service for this node) | block table | image
# The offer goes through the same check as an MQTT offer (tag, format, size, version), each table chunk and
# block through the same Download.handle as a frame, then the same verify, idle check, install and trial.
# Kept small: it is loaded beside the receiver and the upload's 4 KB buffer (test_ota_lan checks the heap).
import asyncio
import json
import struct
import time

import heap
import otamode
import otarx
import store

RESULT = "ota_lan.json"  # the last upload's failure, for GET /api/ota in normal mode
WAIT_S = 120  # no upload begun this long after entering the mode: back to normal mode
SETTLE_S = 10  # the local port opens once the broker's connect burst is out, or after this long without it
LAN_RX = 512 + 132  # the link's receive buffer while an upload holds the large one: a command (core.CMD_MAX)
# The upload's frame buffer: the receive buffer app.py reserved while the heap was whole (4 KB in one piece: a
# heap cut up by the imports may have none). The link gets a small one instead, since this mode then takes only
# commands from the broker (larger messages are skipped unread, as any oversized one).
LAN_BUF = None


class LanMode(otamode.Lean):
    """The download mode for a LAN upload: the receiver is Lan, offers wait in the broker until it ends."""

    MQ_KEEP = otamode.Lean.MQ_KEEP + ("ota_key",)  # the upload's offer is checked later: the key stays for it

    def __init__(self, **kw):
        global LAN_BUF
        LAN_BUF, heap.RX = heap.RX, bytearray(LAN_RX)  # before the link takes heap.RX (Core.__init__)
        self.web_password = kw["cfg"].get("web_password")  # before shed() clears the config
        otamode.Lean.__init__(self, **kw)

    def receiver(self):
        return Lan(self)

    def begin(self, offer):
        pass  # the offer comes with the upload (Lan.upload checks it then)

    def on_offer(self, payload):
        pass  # an offer, or its withdrawal, waits in the broker until the upload ends

    def start(self):
        otamode.Lean.start(self)
        asyncio.create_task(serve(self.rx))


class Refused(Exception):
    pass  # args: HTTP status, code, reason


class Lan(otarx.Receiver):
    def __init__(self, app):
        otarx.Receiver.__init__(self, app)
        self.offer = {}
        self.state = "waiting"
        self.busy = False
        self.code = self.reason = None
        self.left = 0  # bytes of the body not read yet
        self.read_s = app.mq.get("ota_lan_read_s", 10)  # a body silent this long is given up

    def want(self):
        pass  # the client pushes the whole file: nothing to ask the ota service for

    def fail(self, code, reason):
        self.code, self.reason = code, reason[:200]
        app = self.app
        app.errlog.add("ota_" + code, "LAN upload refused: " + self.reason, "error", app.ts())
        app.bad_input += 1
        store.save(RESULT, {"state": "failed", "code": code, "reason": self.reason, "release": self.offer.get("release")})
        if "release" in self.offer:
            self.progress("failed", code, self.reason)
        self.stop()
        self.state = "failed"
        store.remove("ota_offer.json")  # otamode.OFFER: the next boot is normal mode
        if not self.busy:  # else once the upload's answer is out (visit)
            app.leave(None)  # back to normal mode; an MQTT offer of this release is not refused for it

    def status(self):
        s = {"mode": "download", "state": self.state, "fw": self.app.fw, "release": self.offer.get("release"),
             "heap_min": heap.low, "code": self.code, "reason": self.reason}
        if self.dl is not None:
            s["bytes"], s["size"], s["bad"] = self.dl.bytes_done(), self.dl.size, self.dl.bad
        return s

    async def read(self, r, mv):
        # Straight into the buffer: a bytes object per read would cut up the little heap this mode has left.
        got = 0
        while got < len(mv):
            n = await asyncio.wait_for(r.readinto(mv[got:]), self.read_s)
            if not n:
                raise EOFError("connection closed")
            got += n
        self.left -= got

    async def upload(self, r, buf):
        mv = memoryview(buf)
        await self.read(r, mv[:8])
        magic, n = struct.unpack(">4sI", buf)
        if magic != b"NFU1" or not 0 < n <= len(buf):
            raise Refused(400, "bad_file", "not a node upload file (.nfu): make one with nodefleet ota upload --save")
        await self.read(r, mv[:n])
        try:
            o = json.loads(bytes(mv[:n]))
            o["stream"] = "lan"  # not under the tag; this mode subscribes to no stream
            expect = 8 + n + o["blocks"] * 32 + o["size"]  # 32: a block's sha256 in the table
        except (ValueError, KeyError, TypeError) as exc:
            raise Refused(400, "bad_offer", "the file's offer is unreadable: %r" % exc)
        total = self.left + 8 + n
        if total != expect:
            raise Refused(400, "bad_length", "%d bytes, the file's offer says %d: %s" % (
                total, expect, "truncated" if total < expect else "oversized"))
        if not self.take_offer(o):
            raise Refused({"not_newer": 409, "no_space": 413}.get(self.code, 400), self.code, self.reason)
        dl = self.dl
        for u in range(dl.units):
            block = u >= dl.nt
            i = u - dl.nt if block else u
            size = min(dl.bs, (dl.size if block else dl.blocks * 32) - i * dl.bs)
            await self.read(r, mv[20:20 + size])
            struct.pack_into(">2sBBI8sI", buf, 0, b"NF", 1, 2 if block else 1, i, dl.rid, size)
            # Checked as a frame of the MQTT stream is; a download resumed from flash already has some.
            if self.state == "downloading" and self.frame(mv[:20 + size]) not in ("ok", "dup"):
                raise Refused(400, "bad_block", "%s %d does not match its sha256 in the manifest: the file is "
                              "damaged, make it again" % ("block" if block else "table chunk", i))
        for _ in range(200):  # the verify runs in its own task right after the last block
            if self.state != "downloaded":
                break
            await asyncio.sleep_ms(50)

    async def drain(self, r, n):
        # The rest of a body read and dropped, so closing does not reset the connection before the answer.
        # Into the upload's buffer while it is there (no new allocation on a heap the refusal found short).
        mv = memoryview(LAN_BUF if LAN_BUF is not None else bytearray(256))
        try:
            while n > 0:
                got = await asyncio.wait_for(r.readinto(mv[:min(n, len(mv))]), 1)
                if not got:
                    return
                n -= got
        except (OSError, asyncio.TimeoutError):
            pass

    async def take(self, r, length):
        # (status, answer) of the upload on this connection.
        global LAN_BUF
        self.busy = True
        self.left = length
        try:
            try:
                await self.upload(r, LAN_BUF)
            except (OSError, asyncio.TimeoutError, EOFError) as exc:
                raise Refused(408 if isinstance(exc, asyncio.TimeoutError) else 400, "truncated",
                              "the upload stopped %d bytes before its end (%r): send the file again" % (self.left, exc))
            s = self.status()
            if self.state == "verified":
                s["next"] = "installs when idle (relay off, no rule due within %d s)" % self.margin
            return 200, s
        except Refused as exc:
            status, code, reason = exc.args
            if self.state != "failed":
                self.fail(code, reason)
            await self.drain(r, self.left)
            return status, {"error": self.reason, "code": self.code}
        finally:
            LAN_BUF = None  # the install that follows needs the room

    async def visit(self, r, w):
        try:
            line = (await asyncio.wait_for(r.readline(), 5)).split()
            length, auth = 0, None
            for _ in range(40):
                k, _, v = (await asyncio.wait_for(r.readline(), 5)).decode().partition(":")
                k = k.strip().lower()
                if not k:
                    break
                if k == "content-length":
                    length = int(v)
                elif k == "authorization":
                    auth = v.strip()
            if not _authorized(self.app, auth):
                status, content = 401, {"error": "password required: any user name and the node's web password"}
            elif line[0] == b"GET":
                status, content = 200, self.status()
            elif line[1] != b"/api/ota" or self.busy or self.state != "waiting" or length <= 0:
                status, content = 409, {"error": "in download mode (%s): POST the .nfu file to /api/ota once, with "
                                        "a Content-Length; GET /api/ota says how it goes" % self.state}
            else:
                status, content = await self.take(r, length)
                length = 0
            await self.drain(r, length)  # a body not taken
        except Exception as exc:  # one bad client never stops the mode
            status, content = 400, {"error": "bad request: %r" % exc}
        try:
            body = json.dumps(content)
            w.write(("HTTP/1.0 %d -\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%sConnection: close"
                     "\r\n\r\n%s" % (status, len(body), "WWW-Authenticate: Basic realm=\"node\"\r\n" if status == 401
                                     else "", body)).encode())
            await w.drain()
            w.close()
            await w.wait_closed()
        except Exception as exc:
            print("otalan: answer not sent: %r" % exc)
        if self.state == "failed" and self.busy:
            self.app.leave(None)  # after the answer: back to normal mode once the progress is out


def _authorized(app, auth):
    pw = app.web_password
    if not pw:
        return True
    from binascii import a2b_base64

    try:
        return auth.startswith("Basic ") and a2b_base64(auth[6:]).decode().partition(":")[2] == pw
    except (AttributeError, ValueError, UnicodeError):
        return False


async def serve(rx):
    import hal

    # The broker first: its connect burst (session, subscribe, status, info, state, log) is out before an upload
    # can begin, so the two never hold the heap at once (2-3 KB: the upload's low point fell to 15.6 KB when they
    # met). Clients poll the port until it answers; a node without its broker takes the upload SETTLE_S later.
    link = rx.app.link
    for _ in range(SETTLE_S * 10):
        if link.up and not link.queue and not link.inflight:
            break
        await asyncio.sleep_ms(100)
    addr = hal.http_addr(False)
    if addr is not None:
        await asyncio.start_server(rx.visit, addr[0], addr[1])
    # Nobody uploads: the node does not stay out of normal mode.
    t0 = time.ticks_ms()
    while rx.state == "waiting" and not rx.busy:
        if time.ticks_diff(time.ticks_ms(), t0) > WAIT_S * 1000:
            rx.fail("timeout", "no upload within %d s of POST /api/ota: start again" % WAIT_S)
            return
        await asyncio.sleep(1)

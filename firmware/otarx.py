# The OTA receiver of the download mode (otamode.py, docs/ota.md): offer check, download with credit and repair,
# progress, verify, the idle check (the install is otainst.py, the trial boot ottrial.py). Never loaded in normal mode.
import asyncio
import random
import sys
import time
from binascii import unhexlify

import clock
import heap
import store
from hal import slots

STALL_MS = 2000  # a want after this long without a frame while units are missing
PROGRESS_MS = 1000


def report(o, state, dl=None, ts=None, rate=None, code=None, reason=None):
    # A Progress payload (nodefleet.contracts.ota.Progress) of the download dl, or of the offer alone (refused,
    # installing: the download's code has gone by then).
    size = o.get("size") if isinstance(o.get("size"), int) else 0
    p = {"v": 1, "release": o.get("release"), "state": state, "size": size, "bad": dl.bad if dl else 0,
         "bytes": dl.bytes_done() if dl else size if state in ("updating", "updated") else 0}
    for k, v in (("ts", ts), ("rate", rate), ("code", code), ("reason", reason), ("rollout", o.get("rollout"))):
        if v is not None:
            p[k] = v
    return p


class Receiver:
    def __init__(self, app):
        self.app = app
        mq = app.mq
        self.window = mq.get("ota_window", 32)
        self.margin = mq.get("ota_idle_margin", 300)
        self.node_name = mq.get("node_name") or app.prefix.split("/")[-1]
        self.offer = None
        self.dl = None
        self.state = None
        self.session = None
        self.since_want = 0
        self.last_frame = self.last_want = self.last_progress = time.ticks_ms()
        self.last_bytes = 0
        self.task = None

    # -- publishing ----------------------------------------------------------------
    def progress(self, state, code=None, reason=None, rate=None):
        p = report(self.offer, state, self.dl, clock.now() if clock.valid() else None, rate, code, reason)
        # QoS 1 through the bounded queue; only the newest progress waits there.
        self.app.send("ota/progress", p, False, 1, "progress")

    def want(self):
        self.since_want = 0
        self.last_want = time.ticks_ms()
        self.app.send("ota/want", self.dl.want(self.session, self.window), False, 0, "want")

    # -- the offer -------------------------------------------------------------------
    def same(self, o):
        return self.offer is not None and o.get("tag") == self.offer.get("tag") and o.get("stream") == self.offer.get("stream")

    def take_offer(self, o):
        """The offer the download mode started for (parsed); returns False if refused."""
        self.offer = o
        key = self.app.mq.get("ota_key")
        if not key:
            self.fail("no_key", "no ota_key in mqtt.json: provision the node again to get its OTA key")
            return False
        try:
            key = unhexlify(key)
        except ValueError:
            self.fail("no_key", "ota_key in mqtt.json is not hex")
            return False
        info = slots.slot_info()
        import ota  # the offer check, let go once it has answered

        err = ota.check_offer(o, self.node_name, key, self.app.fw, info["format"], info["capacity"])
        del ota
        sys.modules.pop("ota", None)
        if err is None and not isinstance(o.get("stream"), str):
            err = ("bad_offer", "the offer names no stream")
        if err is None and 20 + o.get("block_size", 4096) > heap.FRAME_MAX:
            err = ("no_space", "blocks of %d bytes, the receive buffer holds %d" % (o["block_size"], heap.FRAME_MAX - 20))
        if err is not None:
            self.fail(err[0], err[1])
            return False
        import otastore  # held through self.dl only: the install lets both go

        self.files = (otastore.PROGRESS, otastore.TABLE)
        try:
            self.dl = otastore.Download(o)
        except OSError as exc:
            self.fail("no_space", "cannot prepare the slot: %s" % exc)
            return False
        self.last_bytes = self.dl.bytes_done()
        if self.dl.complete():
            self.state = "downloaded"  # finished before a reboot: verify again, then install
        else:
            self.state = "downloading"
            self.progress("downloading")
            self.new_session()
        self.ensure_task()
        return True

    def stop(self):
        # What is on flash stays for a later offer of the same image (withdrawn, then offered again).
        self.dl = None
        self.state = None

    def fail(self, code, reason):
        self.progress("failed", code, reason[:200])
        self.stop()
        self.state = "failed"
        self.app.leave(self.offer.get("tag"))  # back to normal mode, which then ignores this offer

    # -- frames --------------------------------------------------------------------
    def new_session(self):
        self.session = "%08x.%d" % (random.getrandbits(32), self.app.link.connects)
        if self.dl is not None:
            self.dl.got = 0

    def on_up(self):
        # A new connection is a new session: the sender forgets what it had in flight.
        if self.state == "downloading":
            self.new_session()
            self.want()

    def frame(self, payload):
        # What Download.handle said ("ok", "dup", "bad", ...), None when not downloading.
        if self.state != "downloading":
            return None
        r = self.dl.handle(payload)
        self.last_frame = time.ticks_ms()
        self.since_want += 1
        if r == "bad":
            print("ota: frame refused (%d bad)" % self.dl.bad)
        if self.dl.complete():
            self.state = "downloaded"  # the stream's frames for other nodes are dropped from now on
            self.want()  # the sender sees the full bitmap and lets this node go
            self.progress("downloaded")
            asyncio.create_task(self.check())  # at once, not at the timer's next tick (an Event costs more heap)
        elif self.since_want >= max(1, self.window // 2):
            self.want()
            heap.sample()  # the low-water mark sees a download too, without a collection per frame
        return r

    # -- the timer: stalls, progress, verify, the idle check ------------------------
    def ensure_task(self):
        if self.task is None:
            self.task = asyncio.create_task(self.run())

    async def run(self):
        try:
            while self.state in ("downloading", "downloaded", "verified"):
                await asyncio.sleep_ms(250)
                now = time.ticks_ms()
                if self.state == "downloading":
                    if self.app.link.up and time.ticks_diff(now, max(self.last_frame, self.last_want)) >= STALL_MS:
                        self.want()
                    dt = time.ticks_diff(now, self.last_progress)
                    if dt >= PROGRESS_MS:
                        b = self.dl.bytes_done()
                        if b != self.last_bytes:
                            self.progress("downloading", rate=(b - self.last_bytes) * 1000 / dt)
                        self.last_bytes = b
                        self.last_progress = now
                elif self.state == "downloaded":
                    self.verify()  # finished before a reboot
                elif self.app.link.up and self.app.link.pending("progress"):
                    pass  # `verified` reaches the broker before `updating` would take its place in the queue
                elif self.state == "verified" and (self.idle() or self.offer.get("force")):
                    await self.install()  # (not a download failed while this task slept: its state is gone)
        finally:
            self.task = None

    async def check(self):
        await asyncio.sleep_ms(10)  # the full want and `downloaded` go out before the check holds the loop
        if self.state == "downloaded":
            self.verify()

    def verify(self):
        if self.dl.verify(bytearray(512)):
            self.state = "verified"
            self.progress("verified")
        else:
            self.dl.clear()
            self.fail("bad_image", "the image read back does not match its sha256")

    def idle(self):
        # Relay off and no rule due within the margin (with rules but no valid time: not idle).
        n = self.app.node
        if n.relay:
            return False
        rules_ = (store.load("schedule.json", None) or {}).get("rules", [])  # the node's schedule, run here or not
        active = [r for r in rules_ if r.get("enabled", True)] if n.logic_enabled and not n.stopped else []
        if not active:
            return True
        if not clock.valid():
            return False
        import rules

        now = clock.now()
        nxt = rules.next_start(active, clock._tz, now)
        return nxt is None or nxt[3] - now > self.margin

    async def install(self):
        self.state = "updating"
        # The download's code and data go before the install's come in (the download's files stay until the
        # slot is selected, so a power cut before that resumes a verified download).
        self.dl = None
        sys.modules.pop("otastore", None)
        heap.sample()
        import otainst  # the install and what follows its reboot: loaded only now

        await otainst.install(self)


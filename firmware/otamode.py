# The download mode (docs/ota.md, "The receiver"): normal mode restarts into it when an offer is worth taking, so
# the OTA modules load first, into a heap that is still whole. It keeps what a downloading node needs: the switch
# and its commands, NodeLogic, WiFi, the link, state, log and telemetry (without sensors); no config or schedule
# updates, no local page. Subscriptions are fixed at connect: commands, the offer, ota/data and the offer's stream.
# An offer {"lan": true} (POST /api/ota in normal mode) runs otalan.LanMode instead: a LAN upload.
import otarx  # noqa: I001  first: the receiver, otastore and hal.slots while the heap is whole

import asyncio

import heap
import store
from core import Core

OFFER = "ota_offer.json"  # {"offer": ..., "tries": n}: this mode; {"refused": tag}: normal mode ignores that tag
TRIES = 3  # boots of this mode in a row that were not power cuts (a crash, a watchdog): then back to normal mode


class Lean(Core):
    MQ_KEEP = ("max_backoff", "telemetry_max")  # what shed() keeps of mqtt.json

    def __init__(self, *, offer, tries, **kw):
        p = kw["mq"]["topic_prefix"]
        self.data = p + "/ota/data"
        stream = offer.get("stream")
        self.stream = stream if isinstance(stream, str) else self.data
        Core.__init__(self, [(p + "/set/#", 1), (p + "/ota/offer", 1), (self.data, 0), (self.stream, 0)],
                      heap.FRAME_MAX, **kw)
        self.node.rules = []  # no NodeLogic here: the rule engine stays out of this heap (the scheduler backs it up)
        self.schedule = None  # read again by the idle check (otarx.Receiver.idle)
        self.sensors = False
        self.leaving = False
        self.tries = tries
        self.rx = self.receiver()
        if tries > TRIES:
            self.rx.offer = offer
            self.rx.fail("restarts", "the download mode restarted %d times without finishing" % (tries - 1))
        else:
            self.begin(offer)
        self.shed()

    def receiver(self):
        return otarx.Receiver(self)

    def begin(self, offer):
        self.rx.take_offer(offer)

    def shed(self):
        # What this mode never reads again goes before the connect burst, its lowest point (docs/ota.md): the
        # config's second copy (a provisioned one is about 1.9 KB), its pins (hal.init has them) and the
        # login and key (the link and the receiver have them). In place, cleared so the tables shrink too:
        # app.py holds the same dicts.
        self.cfg_raw = {"version": self.cfg_raw.get("version")} if isinstance(self.cfg_raw, dict) else None
        for d, keep in ((self.cfg, ("ap_after", "telemetry_period")), (self.mq, self.MQ_KEEP)):
            kept = [(k, d[k]) for k in keep if k in d]
            d.clear()
            for k, v in kept:
                d[k] = v

    def dispatch(self, topic, payload, size, retained):
        if topic == self.stream or topic == self.data:
            # Checked in place in the receive buffer: nothing parsed, nothing kept.
            if payload is not None and self.rx.frame(payload) == "ok" and self.tries:
                self.tries = 0  # this boot got somewhere: the count of fruitless restarts starts again
                store.save(OFFER, {"offer": self.rx.offer})
            return True
        if not topic.startswith(self.prefix + "/"):
            return
        kind = topic[len(self.prefix) + 1:]
        if kind.startswith("set/"):
            self.command(kind, payload, size, retained)
        elif kind == "ota/offer" and not self.leaving and not self.too_large(kind, payload, size, heap.MAX_IN):
            self.on_offer(payload)

    def on_offer(self, payload):
        rx = self.rx
        if not payload:
            # Withdrawn: back to normal mode; what is on flash stays for a later offer of the same image.
            store.remove(OFFER)
            self.leave(None)
            return
        o = self.offer_of(payload)
        if o is None or rx.same(o) or rx.state == "updating":
            return  # the same offer again (every connect replays it), or the install under way
        # Another offer: taken by a fresh start of this mode (its stream is subscribed at connect).
        store.save(OFFER, {"offer": o})
        self.leaving = True
        self.restart_soon(True)

    def leave(self, refused):
        # Back to normal mode once the last progress has reached the broker (or after 30 s without the broker).
        if refused:
            store.save(OFFER, {"refused": refused})
        self.leaving = True
        asyncio.create_task(self._leave())

    async def _leave(self):
        for _ in range(120):
            if self.link.up and not self.link.pending("progress"):
                break
            await asyncio.sleep_ms(250)
        await self._restart(True)

    def on_up(self):
        Core.on_up(self)
        self.rx.on_up()

    def start_led(self):
        import hal

        hal.led(1, "updating")  # steady, the whole download: no LED task (led.py) in this heap


async def run(st, **kw):
    # st: OFFER as app.py read it (one copy of the offer on the heap).
    tries = st.get("tries", 0)
    if kw["cause"] != "power_on":
        tries += 1  # a power cut is no reason to give up: a crash loop is
    st["tries"] = tries
    store.save(OFFER, st)
    mode = Lean
    if st["offer"].get("lan") is True:
        import otalan

        mode = otalan.LanMode
    app = mode(offer=st["offer"], tries=tries, **kw)
    del st
    app.start()
    await app.link.run()

# Normal mode: core.py (switch, commands, link, NodeLogic, telemetry) plus config, schedule, the local web page,
# the first look at an OTA offer: one worth taking restarts the node into the download mode (otamode.py),
# planned deep sleep (sleep.py) and asking the backend for time while the clock is unset.
import asyncio

import clock
import hal
import heap
import localpage
import store
from core import Core

MAX_IN = heap.MAX_IN  # config and schedule; the receive buffer (heap.RX) holds this much
ASK_TIME_S = 60  # how often a node without valid time asks for it


class App(Core):
    SLEEPS = True  # set/sleep (commands.py hands it to sleep.py)

    def __init__(self, *, slot=None, **kw):
        # An OTA update under way across its reboot (otarx.json): its trial and its report (ottrial.Boot).
        ota_st = store.load("otarx.json", None) or {}
        phase = ota_st.get("phase")
        # The update's own reboot: relay, rule and its end come back as they were.
        p = kw["mq"]["topic_prefix"]
        # Offers at QoS 1; ota/data (QoS 0, frames, dropped here) so the inbox is the download mode's.
        Core.__init__(self, [(p + "/set/#", 1), (p + "/config", 1), (p + "/schedule", 1), (p + "/ota/offer", 1),
                             (p + "/ota/data", 0)], MAX_IN, power_on="last" if phase in ("switch", "failed") else None,
                      **kw)
        self.refused_sha = ota_st.get("sha256") if phase == "refuse" else None
        self.refused_tag = (store.load("ota_offer.json", None) or {}).get("refused")
        self.ota_boot = None
        self.sleep_cmd = None  # set/sleep: epoch to sleep until
        if self.cause == "deepsleep":
            import sleep  # loaded only by a node that sleeps (its heap is tight)

            sleep.woke(self)
        if phase in ("switch", "trial", "failed"):
            import ottrial

            self.ota_boot = ottrial.Boot(self, ota_st, slot)

    def dispatch(self, topic, payload, size, retained):
        if not topic.startswith(self.prefix + "/"):
            return
        kind = topic[len(self.prefix) + 1:]
        if kind.startswith("set/"):
            self.command(kind, payload, size, retained)
        elif kind == "ota/data":
            return True  # a frame for a download this mode does not run: nothing parsed, nothing kept
        elif not self.too_large(kind, payload, size, MAX_IN):
            if kind == "config":
                self.apply_config(payload)
            elif kind == "schedule":
                self.apply_schedule(payload)
            elif kind == "ota/offer":
                self.on_offer(payload)

    def on_offer(self, payload):
        # Only the fields that decide whether to look further; the tag, format and size are checked by the
        # download mode, which has the heap for the OTA modules. An empty retained offer: nothing offered.
        o = self.offer_of(payload)
        if o is None:
            return
        if self.ota_boot is not None and self.ota_boot.state == "trial":
            return  # a new firmware on trial takes no offer before it has confirmed itself
        if o["release"] == self.fw:
            # Runs it already, confirmed: the ota service missed the report (it withdraws the offer once it has it).
            n = o.get("size", 0)
            self.send("ota/progress", {"v": 1, "release": self.fw, "state": "updated", "bytes": n, "size": n,
                                       "rollout": o.get("rollout")}, False, 1, "progress")
            return
        if o["sha256"] == self.refused_sha or o["tag"] == self.refused_tag:
            return
        # Into the download mode: the offer and the node state on flash, the relay kept through the restart.
        store.save("ota_offer.json", {"offer": o})
        print("ota: offer of %s: restarting into the download mode" % o["release"])
        self.restart_soon(True)


    async def slow_loop(self):
        # Once a second: ask for time while the clock is unset (the scheduler answers with set/time; it also
        # offers it on connect and hourly); sleep when planned (sleep.py, loaded only then).
        n = 0
        while True:
            await asyncio.sleep_ms(1000)
            n += 1
            if n % ASK_TIME_S == 5 and self.link.up and not clock.valid():
                self.send("clock", {"v": 1})
            if self.sleep_cmd is not None or self.cfg.get("sleep"):
                import sleep

                await sleep.check(self)

    def apply_config(self, payload):
        c = self.json_of("config", payload)
        if c is None:
            return
        # Config checks are needed only when a config arrives: loaded now and let go after (about 2.8 KB).
        import settings
        import sys

        err = settings.check_config(c)
        merged = settings.merged(c) if not err else None
        del settings
        sys.modules.pop("settings", None)
        sys.modules.pop("rulecheck", None)  # a sleep window's check (sleep.check_window)
        if err:
            v = c.get("version") if isinstance(c, dict) else None
            self.bad("bad_config", "config version %s rejected: %s" % (v, err))
            return
        if c == self.cfg_raw:
            return  # the retained copy again after a reconnect: no flash write
        store.save("config.json", c)
        self.cfg_raw = c
        self.cfg = merged
        clock.set_tz(self.cfg["tz"])
        if "pins" in c:
            hal.relay(False)  # the old relay pin must not stay on when the relay moves
            hal.init(c["pins"])
            hal.relay(self.node.relay)
        self.node.changed()  # a new state tells the version now in force

    def apply_schedule(self, payload):
        # An empty retained message deletes the schedule.
        s = self.json_of("schedule", payload) if payload else None
        if s is None and payload:
            return
        err = None
        if s is not None:  # the checks are loaded for this and let go after (rulecheck.py)
            import rulecheck
            import sys

            err = rulecheck.check_schedule(s, heap.RX)  # parsed: its buffer is free to lend
            del rulecheck
            sys.modules.pop("rulecheck", None)
        if err:
            self.bad("bad_schedule", err)
            return
        if s is None:
            if self.schedule_version is None:
                return
            store.remove("schedule.json")
            self.schedule, self.schedule_version = {"v": 1, "version": 1, "rules": []}, None
        elif s == self.schedule and self.schedule_version is not None:
            return
        else:
            store.save("schedule.json", s)
            self.schedule, self.schedule_version = s, s["version"]
        self.node.rules = self.schedule.get("rules", [])
        self.node.tick()
        self.node.changed()  # a new state tells the version now in force


async def run(**kw):
    app = App(**kw)
    app.start()
    asyncio.create_task(app.slow_loop())
    await localpage.serve(app)
    await app.link.run()

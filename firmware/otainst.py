# Installing a verified download and what follows the update's reboot (docs/ota.md): unpack, save the relay
# and mode, select the slot, reboot; then the trial (self-test within the deadline, confirm or roll back) and
# the report. Loaded at install, or at a boot that finds otarx.json: never on a node that is not updating.
import asyncio
import time

import clock
import hal
import store
from hal import slotboot, slots

STATE = "otarx.json"  # phase: switch (slot selected), trial, failed (rolled back), refuse (that image, never again)


async def install(rx):
    app = rx.app
    o = rx.offer
    info = slots.slot_info()
    target = info["next"]
    if info["format"] == "nfi1":
        # The image's modules into app<slot>/, which main.py puts first on the path when that slot boots.
        import otaunpack

        d = "app%d" % target
        store.remove(d + "/image.json")
        otaunpack.unpack(d, bytearray(512))
        store.save(d + "/image.json", {"version": o["release"], "sha256": o["sha256"]})
    if info.get("rolled_back"):
        # An earlier update's rollback marker goes now: one that Boot finds after this switch is this update's.
        slotboot.slot_mark_valid()
    n = app.node
    n._save()  # relay, mode, rule and its end: restored as they are after the reboot (power_on "last")
    store.save(STATE, {"phase": "switch", "slot": target, "release": o["release"], "sha256": o["sha256"],
                       "size": o["size"], "rollout": o.get("rollout"), "from": app.fw, "relay": n.relay})
    rx.progress("updating")
    for _ in range(40):  # let the progress reach the broker
        if not app.link.pending("progress"):
            break
        await asyncio.sleep_ms(50)
    store.remove("ota_offer.json")  # first: a power cut now must not boot the trial into the download mode
    slotboot.slot_select()
    for name in rx.files:  # the download's bitmap and block table (otastore)
        store.remove(name)
    hal.restart()


class Boot:
    """otarx.json says an update was under way: a trial to run, a result to report, or nothing done."""

    def __init__(self, app, st, slot):
        self.app = app
        self.st = st
        self.state = None
        info = slots.slot_info()
        if info["running"] == st.get("slot"):
            if slot and slot.get("trial"):
                st["phase"] = "trial"
                store.save(STATE, st)
                self.state = "trial"
                asyncio.create_task(self.trial(app.mq.get("ota_trial", 60)))
            else:
                self.confirmed()  # marked valid before a power cut took the report
            return
        rb = info.get("rolled_back") or {}
        if st.get("phase") in ("trial", "failed") or rb.get("from") == st.get("slot"):
            self.state = "rolled_back"
            app.refused_sha = st.get("sha256")  # the retained offer of that image must not install it again
            self.report("rolled_back", st.get("code") or "not_confirmed",
                        st.get("reason") or rb.get("reason") or "the new firmware did not confirm its trial boot",
                        self._refuse)
        else:
            store.remove(STATE)  # the power went before the slot was selected: the retained offer resumes it

    def report(self, state, code=None, reason=None, on_acked=None):
        st = self.st
        p = {"v": 1, "release": st.get("release"), "state": state, "size": st.get("size", 0), "bad": 0,
             "bytes": st.get("size", 0) if state == "updated" else 0}
        for k, v in (("ts", clock.now() if clock.valid() else None), ("code", code), ("reason", reason),
                     ("rollout", st.get("rollout"))):
            if v is not None:
                p[k] = v
        self.app.send("ota/progress", p, False, 1, "progress", on_acked)

    def _refuse(self):
        # Reported: from now on this image is refused (a new release has another sha256).
        store.save(STATE, {"phase": "refuse", "sha256": self.st.get("sha256")})

    def confirmed(self):
        self.state = "updated"
        self.report("updated", on_acked=lambda: store.remove(STATE))

    async def trial(self, seconds):
        deadline = time.ticks_add(time.ticks_ms(), seconds * 1000)
        while time.ticks_diff(deadline, time.ticks_ms()) > 0:
            if self.app.link.up:
                import selftest

                try:
                    err = selftest.run(self.app)
                except Exception as exc:  # a self-test that raises has failed
                    err = "self-test raised %r" % exc
                if err is None:
                    slotboot.slot_mark_valid()
                    self.confirmed()
                    return
                await self.rollback("self_test", err)
                return
            await asyncio.sleep_ms(250)
        await self.rollback("trial_timeout", "not connected to the broker within %d s of the trial boot" % seconds)

    async def rollback(self, code, reason):
        reason = reason[:200]
        print("ota: rolling back: %s" % reason)
        slotboot.slot_rollback(reason)
        self.st.update(phase="failed", code=code, reason=reason)
        store.save(STATE, self.st)
        await self.app._restart()

# What follows an update's reboot (docs/ota.md), in normal mode: the trial (self-test within the deadline,
# confirm or roll back) and the report. Loaded only at a boot that finds otarx.json, and kept small: that
# boot runs all of normal mode besides it. The slot HAL and the self-test come in only for the moment they
# act, and go again.
import asyncio
import sys
import time

import clock
import store

STATE = "otarx.json"  # phase: switch (slot selected), trial, failed (rolled back), refuse (that image, never again)


def _slotboot():
    from hal import slotboot

    return slotboot


def _drop(*names):
    # Out of sys.modules and off its package: `from hal import slotboot` made it an attribute of hal too, and
    # that reference alone keeps the module's code on the heap.
    for name in names:
        sys.modules.pop(name, None)
        pkg, _, attr = name.rpartition(".")
        if pkg in sys.modules and hasattr(sys.modules[pkg], attr):
            delattr(sys.modules[pkg], attr)


class Boot:
    """otarx.json says an update was under way: a trial to run, a result to report, or nothing done."""

    def __init__(self, app, st, slot):
        # slot: what the boot stub's slot_boot() found (None: no slots.json, the factory slot 0 runs).
        self.app = app
        self.st = st
        self.state = None
        slot = slot or {}
        if slot.get("slot", 0) == st.get("slot"):
            if slot.get("trial"):
                st["phase"] = "trial"
                store.save(STATE, st)
                self.state = "trial"
                asyncio.create_task(self.trial(app.mq.get("ota_trial", 60)))
            else:
                self.confirmed()  # marked valid before a power cut took the report
            return
        rb = slot.get("rolled_back") or {}
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
                _drop("selftest")
                if err is None:
                    _slotboot().slot_mark_valid()
                    _drop("hal.slotboot", "hal.simboot", "hal.esp32boot", "hal.simslot", "hal.esp32slot", "hal.slots")
                    self.confirmed()
                    return
                await self.rollback("self_test", err)
                return
            await asyncio.sleep_ms(250)
        await self.rollback("trial_timeout", "not connected to the broker within %d s of the trial boot" % seconds)

    async def rollback(self, code, reason):
        reason = reason[:200]
        print("ota: rolling back: %s" % reason)
        _slotboot().slot_rollback(reason)
        self.st.update(phase="failed", code=code, reason=reason)
        store.save(STATE, self.st)
        await self.app._restart()

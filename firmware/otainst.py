# Installing a verified download (docs/ota.md): unpack, save the relay and mode, select the slot, reboot.
# Loaded by the download mode at install only; what follows the reboot is ottrial.py.
import asyncio

import hal
import store
from hal import slotboot, slots

# The update across its reboot; normal.py and ottrial.py read it at the next boot (the same name there).
STATE = "otarx.json"


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

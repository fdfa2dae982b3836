# Entry point on the device and in the simulator: the boot stub. It stays outside the A/B slots (docs/ota.md):
# it picks the slot, then runs that slot's modules.
import sys


def _boot():
    # Which slot runs, on trial or not, and a rollback just done (hal.slotboot.slot_boot, once per boot).
    # A node that never updated has no slots.json: its modules lie beside this file and nothing is imported.
    import os

    try:
        os.stat("slots.json")
    except OSError:
        return None
    from hal import slotboot, slots

    b = slotboot.slot_boot()
    if slots.SLOT_FORMAT == "nfi1":
        # The slot's modules, unpacked by the OTA receiver before it selected the slot; without them
        # (slot 0 was never written: the factory firmware) the modules beside this file run.
        d = "app%d" % b["slot"]
        try:
            import json

            with open(d + "/image.json") as f:
                b["image"] = json.load(f)
            b["dir"] = d
        except (OSError, ValueError):
            pass
    for name in list(sys.modules):
        del sys.modules[name]  # the boot's own modules go: the slot brings its own hal
    if "dir" in b:
        sys.path.insert(0, b["dir"])
    return b


BOOT = _boot()
del _boot  # its bytecode, compiled from source at boot, is heap the app needs
import app  # noqa: E402
import hal  # noqa: E402

try:
    app.main(BOOT)
except Exception as exc:  # last resort: keep the traceback on flash, then start again
    app.crash_report(exc)
    hal.restart()

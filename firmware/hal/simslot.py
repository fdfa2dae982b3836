# A/B application slots on files (unix port), the download's part: what hal/esp32slot.py gives over
# esp32.Partition. Booting, selecting and rolling back are hal/simboot.py (loaded by the boot and the install).
import os

SLOT_FORMAT = "nfi1"
SLOT_CAPACITY = int(os.getenv("NF_SLOT_CAPACITY") or 1536 * 1024)  # an ESP32 OTA app partition
STATE = "slots.json"
_running = None  # the slot this process booted (simboot.slot_boot)


def load():
    import json

    try:
        with open(STATE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"active": 0, "previous": 0, "trial": False, "tries": 0}


def _path(n):
    return "slot%d.bin" % n


def running():
    global _running
    if _running is None:
        _running = load()["active"]
    return _running


def slot_info():
    st = load()
    run = running()
    return {"running": run, "next": 1 - run, "trial": st["trial"] and st["active"] == run,
            "capacity": SLOT_CAPACITY, "format": SLOT_FORMAT, "rolled_back": st.get("rolled_back")}


def slot_begin(size):
    if size > SLOT_CAPACITY:
        raise OSError("image of %d bytes, slot holds %d" % (size, SLOT_CAPACITY))
    open(_path(1 - running()), "wb").close()


def slot_write(offset, data):
    with open(_path(1 - running()), "r+b") as f:
        f.seek(offset)
        f.write(data)


def slot_read(offset, buf, slot=None):
    with open(_path(1 - running() if slot is None else slot), "rb") as f:
        f.seek(offset)
        if f.readinto(buf) != len(buf):
            raise OSError("slot shorter than %d bytes" % (offset + len(buf)))

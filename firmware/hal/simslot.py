# A/B application slots on files (unix port): the interface hal/esp32slot.py gives over esp32.Partition.
import json
import os
import time

SLOT_FORMAT = "nfi1"
SLOT_CAPACITY = int(os.getenv("NF_SLOT_CAPACITY") or 1536 * 1024)  # an ESP32 OTA app partition
FLASH_BPS = int(os.getenv("NF_FLASH_BPS") or 0)  # a flash model (bench.ota): writes take len/bps s; 0: as the file
_STATE = "slots.json"
_FRESH = {"active": 0, "previous": 0, "trial": False, "tries": 0}
_running = None  # the slot this process booted (slot_boot)


def _load():
    try:
        with open(_STATE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return dict(_FRESH)


def _save(st):
    with open(_STATE + ".tmp", "w") as f:
        json.dump(st, f)
    os.rename(_STATE + ".tmp", _STATE)  # atomic: a power cut leaves the old selection or the new one


def _path(n):
    return "slot%d.bin" % n


def _run():
    global _running
    if _running is None:
        _running = _load()["active"]
    return _running


def slot_boot():
    # What the ESP-IDF bootloader does at power-up: a trial slot gets one boot, the next returns to the previous.
    global _running
    st = _load()
    if st["trial"]:
        if st["tries"] >= 1:
            st = {"active": st["previous"], "previous": st["previous"], "trial": False, "tries": 0,
                  "rolled_back": {"from": st["active"], "reason": "trial boot not confirmed"}}
        else:
            st["tries"] += 1
        _save(st)
    _running = st["active"]
    return {"slot": _running, "trial": st["trial"], "rolled_back": st.get("rolled_back")}


def slot_info():
    st = _load()
    run = _run()
    return {"running": run, "next": 1 - run, "trial": st["trial"] and st["active"] == run,
            "capacity": SLOT_CAPACITY, "format": SLOT_FORMAT, "rolled_back": st.get("rolled_back")}


def slot_begin(size):
    if size > SLOT_CAPACITY:
        raise OSError("image of %d bytes, slot holds %d" % (size, SLOT_CAPACITY))
    open(_path(1 - _run()), "wb").close()


def slot_write(offset, data):
    with open(_path(1 - _run()), "r+b") as f:
        f.seek(offset)
        f.write(data)
    if FLASH_BPS:
        time.sleep(len(data) / FLASH_BPS)  # blocks like a flash write on the chip (the ESP32 writes ~105 KB/s)


def slot_read(offset, buf, slot=None):
    with open(_path(1 - _run() if slot is None else slot), "rb") as f:
        f.seek(offset)
        if f.readinto(buf) != len(buf):
            raise OSError("slot shorter than %d bytes" % (offset + len(buf)))


def slot_select():
    # The next boot runs the inactive slot on trial; it stays only if slot_mark_valid() follows.
    _save({"active": 1 - _run(), "previous": _run(), "trial": True, "tries": 0})


def slot_mark_valid():
    st = _load()
    _save({"active": st["active"], "previous": st["previous"], "trial": False, "tries": 0})


def slot_rollback(reason="rolled back"):
    # Back to the slot before the trial at the next boot (a self-test failed).
    st = _load()
    _save({"active": st["previous"], "previous": st["previous"], "trial": False, "tries": 0,
           "rolled_back": {"from": st["active"], "reason": reason}})

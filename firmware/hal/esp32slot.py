# A/B application slots over esp32.Partition (a MicroPython OTA build: ota_0 / ota_1, app rollback enabled).
import json
import os

from esp32 import Partition

SLOT_FORMAT = "esp32-app"
_SECTOR = 4096
_STATE = "slots.json"  # which label was selected on trial; the bootloader itself does the rollback


def _load():
    try:
        with open(_STATE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _save(st):
    with open(_STATE + ".tmp", "w") as f:
        json.dump(st, f)
    os.rename(_STATE + ".tmp", _STATE)


def _running():
    return Partition(Partition.RUNNING)


def _next():
    return _running().get_next_update()


def _label(p):
    return p.info()[4]


def slot_boot():
    # A trial image that reset before mark_app_valid_cancel_rollback was reverted by the bootloader: notice it.
    st = _load()
    run = _label(_running())
    if st.get("trial") and st["trial"] != run:
        st = {"rolled_back": {"from": st["trial"], "reason": "trial boot not confirmed"}}
        _save(st)
    return {"slot": run, "trial": st.get("trial") == run, "rolled_back": st.get("rolled_back")}


def slot_info():
    st = _load()
    run, nxt = _running(), _next()
    return {"running": _label(run), "next": _label(nxt), "trial": st.get("trial") == _label(run),
            "capacity": nxt.info()[3], "format": SLOT_FORMAT, "rolled_back": st.get("rolled_back")}


def slot_begin(size):
    cap = _next().info()[3]
    if size > cap:
        raise OSError("image of %d bytes, slot holds %d" % (size, cap))


def slot_write(offset, data):
    if offset % _SECTOR:
        raise ValueError("slot writes start on a 4 KiB sector")
    n = len(data)
    if n % _SECTOR:
        buf = bytearray(b"\xff" * ((n + _SECTOR - 1) // _SECTOR * _SECTOR))
        buf[:n] = data
        data = buf
    _next().writeblocks(offset // _SECTOR, data)  # erases each sector, then writes it


def slot_read(offset, buf, slot=None):
    (_next() if slot is None else Partition(slot)).readblocks(offset // _SECTOR, buf, offset % _SECTOR)


def slot_select():
    # ESP-IDF checks the image before it accepts it as the boot partition (OSError if it is no valid app).
    nxt = _next()
    nxt.set_boot()
    _save({"trial": _label(nxt)})


def slot_mark_valid():
    Partition.mark_app_valid_cancel_rollback()
    _save({})


def slot_rollback(reason="rolled back"):
    run = _label(_running())
    _next().set_boot()  # with two OTA slots the other one is the previous app
    _save({"rolled_back": {"from": run, "reason": reason}})

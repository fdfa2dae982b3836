# A/B application slots over esp32.Partition (a MicroPython OTA build: ota_0 / ota_1, app rollback enabled),
# the download's part. Booting, selecting and rolling back are hal/esp32boot.py.
from esp32 import Partition

SLOT_FORMAT = "esp32-app"
_SECTOR = 4096
STATE = "slots.json"  # which label was selected on trial; the bootloader itself does the rollback


def load():
    import json

    try:
        with open(STATE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def running():
    return Partition(Partition.RUNNING)


def next_slot():
    return running().get_next_update()


def label(p):
    return p.info()[4]


def slot_info():
    st = load()
    run, nxt = running(), next_slot()
    return {"running": label(run), "next": label(nxt), "trial": st.get("trial") == label(run),
            "capacity": nxt.info()[3], "format": SLOT_FORMAT, "rolled_back": st.get("rolled_back")}


def slot_begin(size):
    cap = next_slot().info()[3]
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
    next_slot().writeblocks(offset // _SECTOR, data)  # erases each sector, then writes it


def slot_read(offset, buf, slot=None):
    (next_slot() if slot is None else Partition(slot)).readblocks(offset // _SECTOR, buf, offset % _SECTOR)

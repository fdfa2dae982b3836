# A/B application slots over esp32.Partition, the boot's and the install's part (hal/esp32slot.py is the download's).
import json
import os

from esp32 import Partition

from hal import esp32slot as s


def _save(st):
    with open(s.STATE + ".tmp", "w") as f:
        json.dump(st, f)
    os.rename(s.STATE + ".tmp", s.STATE)


def slot_boot():
    # A trial image that reset before mark_app_valid_cancel_rollback was reverted by the bootloader: notice it.
    st = s.load()
    run = s.label(s.running())
    if st.get("trial") and st["trial"] != run:
        st = {"rolled_back": {"from": st["trial"], "reason": "trial boot not confirmed"}}
        _save(st)
    return {"slot": run, "trial": st.get("trial") == run, "rolled_back": st.get("rolled_back")}


def slot_select():
    # ESP-IDF checks the image before it accepts it as the boot partition (OSError if it is no valid app).
    nxt = s.next_slot()
    nxt.set_boot()
    _save({"trial": s.label(nxt)})


def slot_mark_valid():
    Partition.mark_app_valid_cancel_rollback()
    _save({})


def slot_rollback(reason="rolled back"):
    run = s.label(s.running())
    s.next_slot().set_boot()  # with two OTA slots the other one is the previous app
    _save({"rolled_back": {"from": run, "reason": reason}})

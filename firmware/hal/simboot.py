# A/B application slots on files (unix port), the boot's and the install's part (hal/simslot.py is the download's).
import json
import os

from hal import simslot


def _save(st):
    with open(simslot.STATE + ".tmp", "w") as f:
        json.dump(st, f)
    os.rename(simslot.STATE + ".tmp", simslot.STATE)  # atomic: a power cut leaves the old selection or the new one


def slot_boot():
    # What the ESP-IDF bootloader does at power-up: a trial slot gets one boot, the next returns to the previous.
    st = simslot.load()
    if st["trial"]:
        if st["tries"] >= 1:
            st = {"active": st["previous"], "previous": st["previous"], "trial": False, "tries": 0,
                  "rolled_back": {"from": st["active"], "reason": "trial boot not confirmed"}}
        else:
            st["tries"] += 1
        _save(st)
    simslot._running = st["active"]
    return {"slot": st["active"], "trial": st["trial"], "rolled_back": st.get("rolled_back")}


def slot_select():
    # The next boot runs the inactive slot on trial; it stays only if slot_mark_valid() follows.
    run = simslot.running()
    _save({"active": 1 - run, "previous": run, "trial": True, "tries": 0})


def slot_mark_valid():
    st = simslot.load()
    _save({"active": st["active"], "previous": st["previous"], "trial": False, "tries": 0})


def slot_rollback(reason="rolled back"):
    # Back to the slot before the trial at the next boot (a self-test failed).
    st = simslot.load()
    _save({"active": st["previous"], "previous": st["previous"], "trial": False, "tries": 0,
           "rolled_back": {"from": st["active"], "reason": reason}})

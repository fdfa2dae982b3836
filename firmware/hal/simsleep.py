# Deep sleep of the simulated board (hal/deepsleep.py picks it): the process exits (76) and the launcher (nodefleet.sim) starts it again once
# the sleep is over. The chip's RTC keeps running meanwhile, so the clock (offset, valid) is kept beside the flash.
import json
import sys

from hal import sim

RTC_FILE = "simrtc.json"
SLEEP_EXIT = 76


def deepsleep(ms):
    with open(RTC_FILE, "w") as f:
        json.dump({"offset": sim._clock_offset, "set": sim._rtc_set, "ms": int(ms)}, f)
    sys.exit(SLEEP_EXIT)


def wake_reason():
    return sim._env("NF_WAKE") or "timer"


def woke():
    # Only a wake from a deep sleep finds the RTC as it was (a power cut loses it).
    try:
        with open(RTC_FILE) as f:
            r = json.load(f)
        sim._clock_offset, sim._rtc_set = r["offset"], r["set"]
    except (OSError, ValueError, KeyError):
        pass

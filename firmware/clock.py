# Wall time: valid only once NTP or the backend set it; local time from config offsets.
import hal

_tz = []
_source = None


def valid():
    return hal.rtc_valid()


def now():
    return int(hal.time_s())


def set_backend(ts):
    # Returns the jump in seconds so timers kept in epoch can follow it.
    global _source
    before = now()
    hal.set_time(int(ts))
    _source = "backend"
    return now() - before


def set_tz(offsets):
    global _tz
    _tz = [(int(o["from"]), int(o["offset"])) for o in offsets]


def offset(ts):
    off = 0
    for start, value in _tz:
        if start <= ts:
            off = value
    return off


def local(ts=None):
    ts = now() if ts is None else ts
    return ts + offset(ts)

# Wall time: valid only once NTP, the backend or the chip's RTC (kept across a deep sleep) set it;
# local time from config offsets. source() says which, for the node's info.
import hal

_tz = []
_source = None


def valid():
    return hal.rtc_valid()


def now():
    return int(hal.time_s())


def source():
    # Time the node had at boot came from the RTC (a deep sleep keeps it running; the sim keeps its offset).
    return _source if _source else ("rtc" if valid() else None)


def got_ntp():
    global _source
    _source = "ntp"


def set_backend(ts):
    """The backend's time, taken only when NTP has not set the clock; the jump in seconds, None if not taken."""
    global _source
    if _source == "ntp":
        return None
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

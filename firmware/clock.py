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


def civil(days):
    # (year, month, day) of a day count since 1970-01-01; no gmtime (its epoch varies by port).
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (yoe + era * 400 + (1 if m <= 2 else 0), m, d)


def weekday(days):
    # 0 = Monday; 1970-01-01 was a Thursday.
    return (days + 3) % 7

# NodeLogic rule engine, shared by the firmware (MicroPython) and the scheduler (CPython).
# Pure on purpose: no hal, no clock, no zoneinfo. Times are int epoch seconds (UTC);
# tz is the config's sorted list of (from, offset) pairs; "wall" means node-local seconds.

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
RULE_KEYS = ("id", "at", "duration", "days", "action", "enabled", "every", "end")
SCHEDULE_KEYS = ("v", "version", "rules")
MIN_EVERY = 300
MAX_RULES = 32
# Largest offset change at a transition we look across (real zones move by 1 h, rarely 2 h).
SLACK = 3 * 3600
WEEK_MIN = 7 * 1440


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


def offset(tz, ts):
    off = 0
    for start, value in tz:
        if start <= ts:
            off = value
        else:
            break
    return off


def to_utc(tz, wall):
    """The UTC instant of a node-local wall time, as Python's fold=0 picks it.

    A repeated wall time (autumn) is its first occurrence; a wall time in the
    spring gap uses the offset before the gap, so it lands as late after the gap
    as it was into it (02:30 in a 02:00->03:00 gap is 03:30).
    """
    n = len(tz)
    for i in range(n + 1):
        off = tz[i - 1][1] if i else 0
        t = wall - off
        if (i == 0 or t >= tz[i - 1][0]) and (i == n or t < tz[i][0]):
            return t
    prev = 0
    for start, off in tz:
        if start + prev <= wall < start + off:
            return wall - prev
        prev = off
    return wall - offset(tz, wall)


def _hm(text):
    return int(text[:2]) * 3600 + int(text[3:]) * 60


def _span(r, day):
    """(first wall start, last wall start, step) of rule r's runs that belong to local day `day`, or None."""
    if DAYS[weekday(day)] not in r.get("days", DAYS):
        return None
    first = day * 86400 + _hm(r["at"])
    every = r.get("every")
    if not every:
        return first, first, 86400
    end = day * 86400 + _hm(r["end"])
    if end <= first:
        end += 86400  # the span crosses midnight
    return first, first + (end - 1 - first) // every * every, every


def run_id(r, wall):
    """Deterministic run id: rule id and local date (daily) or local date and start time (interval)."""
    y, m, d = civil(wall // 86400)
    if r.get("every"):
        s = wall % 86400
        return "%s-%04d%02d%02dT%02d%02d" % (r["id"][:50], y, m, d, s // 3600, s // 60 % 60)
    return "%s-%04d%02d%02d" % (r["id"][:55], y, m, d)


def _walls(span, lo, hi):
    # The wall starts of a span within [lo, hi].
    first, last, step = span
    if lo > first:
        first += (lo - first + step - 1) // step * step
    while first <= last and first <= hi:
        yield first
        first += step


def window(rules, tz, ts):
    """The window open at ts: (rule id, run id, action, start, end) or None; the latest start wins."""
    local = ts + offset(tz, ts)
    today = local // 86400
    best = None
    for r in rules:
        if not r.get("enabled", True):
            continue
        dur = r["duration"]
        for day in (today - 2, today - 1, today, today + 1):
            span = _span(r, day)
            if span is None:
                continue
            for wall in _walls(span, local - dur - SLACK, local + SLACK):
                start = to_utc(tz, wall)
                if start <= ts < start + dur and (best is None or (start, wall) > best[0]):
                    best = ((start, wall), r, wall, start)
    if best is None:
        return None
    _, r, wall, start = best
    return (r["id"], run_id(r, wall), r.get("action", "on"), start, start + r["duration"])


def next_start(rules, tz, ts):
    """The first run starting after ts (within 8 days): (rule id, run id, action, start, end) or None."""
    local = ts + offset(tz, ts)
    today = local // 86400
    best = None
    for r in rules:
        if not r.get("enabled", True):
            continue
        for day in range(today - 1, today + 9):
            span = _span(r, day)
            if span is None:
                continue
            for wall in _walls(span, local - SLACK, span[1]):
                if best is not None and wall > local + SLACK + best[0][0] - ts:
                    break  # every later wall starts after the best found (offsets move by SLACK at most)
                start = to_utc(tz, wall)
                # On a start shared by two walls (a spring gap), the later wall wins, as in window().
                if start > ts and (best is None or (start, -wall) < best[0]):
                    best = ((start, -wall), r, wall, start)
    if best is None:
        return None
    _, r, wall, start = best
    return (r["id"], run_id(r, wall), r.get("action", "on"), start, start + r["duration"])


# -- validation: the same answers on the node and in the scheduler ---------


def ident(value):
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        return False
    for c in value:
        # ASCII only, as the contract's pattern: CPython's isalpha() also takes letters such as "é".
        if not ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c in "_.:-"):
            return False
    return True


def _is_hm(at):
    if not (isinstance(at, str) and len(at) == 5 and at[2] == ":" and at[:2].isdigit() and at[3:].isdigit()):
        return False
    return int(at[:2]) <= 23 and int(at[3:]) <= 59


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def check_rule(r):
    if not isinstance(r, dict):
        return "a rule must be an object"
    if not ident(r.get("id")):
        return "rule id must be 1-64 of A-Z a-z 0-9 _ . : -"
    for k in r:
        if k not in RULE_KEYS:
            return "rule %s: unknown field %s" % (r["id"], k)
    if not _is_hm(r.get("at")):
        return "rule %s: at must be HH:MM" % r["id"]
    d = r.get("duration")
    if not _is_int(d) or not 1 <= d <= 86400:
        return "rule %s: duration must be 1-86400 seconds" % r["id"]
    days = r.get("days", DAYS)
    if not isinstance(days, (list, tuple)) or not days or any(x not in DAYS for x in days):
        return "rule %s: days must list mon..sun" % r["id"]
    if len(set(days)) != len(days):
        return "rule %s: days repeat" % r["id"]
    if r.get("action", "on") not in ("on", "off"):
        return "rule %s: action must be on or off" % r["id"]
    if not isinstance(r.get("enabled", True), bool):
        return "rule %s: enabled must be true or false" % r["id"]
    every = r.get("every")
    if every is None:
        if r.get("end") is not None:
            return "rule %s: end needs every" % r["id"]
        return None
    if not _is_int(every) or not MIN_EVERY <= every <= 86400:
        return "rule %s: every must be %d-86400 seconds" % (r["id"], MIN_EVERY)
    if not _is_hm(r.get("end")):
        return "rule %s: an interval rule needs end as HH:MM" % r["id"]
    if d > every:
        return "rule %s: duration must not be longer than every" % r["id"]
    return None


def _minutes(r):
    # (first minute of the week, length in minutes) of each run of r, on wall time; day 4 since 1970 was a Monday.
    length = (r["duration"] + 59) // 60
    for day in range(4, 11):
        span = _span(r, day)
        if span is not None:
            for wall in _walls(span, span[0], span[1]):
                yield (wall - 4 * 86400) // 60, length


def _conflict(rules, scratch=None):
    # One bit per minute of the week for each action (2 x 1260 bytes: the node's heap is small,
    # so it lends its receive buffer as ``scratch`` rather than find 2.5 KB in one piece).
    n = WEEK_MIN // 8 + 1
    if scratch is None or len(scratch) < 2 * n:
        scratch = bytearray(2 * n)
    buf = memoryview(scratch)
    for i in range(2 * n):
        buf[i] = 0
    bits = (buf[:n], buf[n : 2 * n])
    for r in rules:
        if not r.get("enabled", True):
            continue
        mine = 0 if r.get("action", "on") == "on" else 1
        for m0, length in _minutes(r):
            for m in range(m0, m0 + length):
                m %= WEEK_MIN
                if bits[1 - mine][m >> 3] & (1 << (m & 7)):
                    return "rules %s and %s overlap with opposite actions (%s %02d:%02d)" % (
                        _holder(rules, 1 - mine, m), r["id"], DAYS[m // 1440], m // 60 % 24, m % 60)
                bits[mine][m >> 3] |= 1 << (m & 7)
    return None


def _holder(rules, action, m):
    for r in rules:
        if r.get("enabled", True) and (0 if r.get("action", "on") == "on" else 1) == action:
            for m0, length in _minutes(r):
                if 0 <= (m - m0) % WEEK_MIN < length:
                    return r["id"]
    return "?"


def check_schedule(s, scratch=None):
    if not isinstance(s, dict) or s.get("v") != 1:
        return "schedule must be an object with v=1"
    for k in s:
        if k not in SCHEDULE_KEYS:
            return "schedule: unknown field %s" % k
    if not _is_int(s.get("version")) or not 1 <= s["version"] <= 2 ** 31 - 1:
        return "schedule version must be an integer 1-2147483647"
    rules = s.get("rules", [])
    if not isinstance(rules, list) or len(rules) > MAX_RULES:
        return "rules must be a list of at most %d" % MAX_RULES
    ids = []
    for r in rules:
        err = check_rule(r)
        if err:
            return err
        if r["id"] in ids:
            return "rule id %s repeats" % r["id"]
        ids.append(r["id"])
    return _conflict(rules, scratch)

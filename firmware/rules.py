# NodeLogic rule engine, shared by the firmware (MicroPython) and the scheduler (CPython).
# Pure on purpose: no hal, no clock, no zoneinfo. Times are int epoch seconds (UTC);
# tz is the config's sorted list of (from, offset) pairs; "wall" means node-local seconds.
# The checks of a rule and a schedule are rulecheck.py: the node loads them only when a schedule arrives.

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Largest offset change at a transition we look across (real zones move by 1 h, rarely 2 h).
SLACK = 3 * 3600


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

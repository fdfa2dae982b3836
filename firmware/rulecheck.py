# The checks of a NodeLogic rule and schedule, shared by the firmware and the backend (nodefleet.contracts).
# Apart from the engine (rules.py) because the node needs them only when a schedule or a sleep window
# arrives: loaded then and let go after, they cost its resident heap nothing (about 4 KB if kept).
try:
    from rules import DAYS, _span, _walls  # the node: its modules are top-level
except ImportError:
    from firmware.rules import DAYS, _span, _walls  # CPython: the firmware package

RULE_KEYS = ("id", "at", "duration", "days", "action", "enabled", "every", "end")
SCHEDULE_KEYS = ("v", "version", "rules")
MIN_EVERY = 300
MAX_RULES = 32
WEEK_MIN = 7 * 1440


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

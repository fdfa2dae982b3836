# NodeLogic: which daily rule window is open at a local time, and schedule validation.
import clock

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _ident(value):
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        return False
    for c in value:
        if not (c.isalpha() or c.isdigit() or c in "_.:-"):
            return False
    return True


def check_rule(r):
    if not isinstance(r, dict):
        return "a rule must be an object"
    if not _ident(r.get("id")):
        return "rule id must be 1-64 of A-Z a-z 0-9 _ . : -"
    at = r.get("at")
    if not (isinstance(at, str) and len(at) == 5 and at[2] == ":" and at[:2].isdigit() and at[3:].isdigit()):
        return "rule %s: at must be HH:MM" % r["id"]
    if int(at[:2]) > 23 or int(at[3:]) > 59:
        return "rule %s: at must be HH:MM" % r["id"]
    d = r.get("duration")
    if not isinstance(d, int) or isinstance(d, bool) or not 1 <= d <= 86400:
        return "rule %s: duration must be 1-86400 seconds" % r["id"]
    days = r.get("days", DAYS)
    if not isinstance(days, (list, tuple)) or not days or any(x not in DAYS for x in days):
        return "rule %s: days must list mon..sun" % r["id"]
    if r.get("action", "on") not in ("on", "off"):
        return "rule %s: action must be on or off" % r["id"]
    if not isinstance(r.get("enabled", True), bool):
        return "rule %s: enabled must be true or false" % r["id"]
    return None


def check_schedule(s):
    if not isinstance(s, dict) or s.get("v") != 1:
        return "schedule must be an object with v=1"
    if not isinstance(s.get("version"), int) or s["version"] < 1:
        return "schedule version must be an integer >= 1"
    rules = s.get("rules", [])
    if not isinstance(rules, list) or len(rules) > 32:
        return "rules must be a list of at most 32"
    ids = []
    for r in rules:
        err = check_rule(r)
        if err:
            return err
        if r["id"] in ids:
            return "rule id %s repeats" % r["id"]
        ids.append(r["id"])
    return None


def window(rules, local_ts):
    """The open window at local_ts: (rule id, run id, action, seconds left) or None; the latest start wins."""
    best = None
    today = local_ts // 86400
    for r in rules:
        if not r.get("enabled", True):
            continue
        at = r["at"]
        offset = int(at[:2]) * 3600 + int(at[3:]) * 60
        days = r.get("days", DAYS)
        for day in (today, today - 1):
            start = day * 86400 + offset
            if DAYS[clock.weekday(day)] not in days or not start <= local_ts < start + r["duration"]:
                continue
            if best is None or start > best[0]:
                y, m, d = clock.civil(day)
                run_id = "%s-%04d%02d%02d" % (r["id"][:55], y, m, d)
                best = (start, r["id"], run_id, r.get("action", "on"), start + r["duration"] - local_ts)
    return best[1:] if best else None

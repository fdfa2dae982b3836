"""Reference answers from CPython's zoneinfo, written independently of firmware/rules.py.

``tz_offsets`` turns an IANA zone into the config's ``tz`` list (what the
backend sends nodes); ``window``/``next_start`` place each rule's wall-clock
starts with ``datetime(..., fold=0)``, the rule engine's documented choice.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _offset(zone: ZoneInfo, ts: int) -> int:
    return int(datetime.fromtimestamp(ts, zone).utcoffset().total_seconds())  # type: ignore[union-attr]


def tz_offsets(name: str, start: int, end: int) -> list[dict[str, int]]:
    """Every UTC-offset change of zone ``name`` in [start, end), the first entry at ``start``."""
    zone = ZoneInfo(name)
    out = [{"from": start, "offset": _offset(zone, start)}]
    t = start
    while t < end:
        nxt = t + 3600
        if _offset(zone, nxt) != _offset(zone, t):
            lo, hi = t, nxt  # the change happens in (lo, hi]: find its first second
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(zone, mid) == _offset(zone, t):
                    lo = mid
                else:
                    hi = mid
            out.append({"from": hi, "offset": _offset(zone, hi)})
        t = nxt
    return out


def _starts(rule: dict, zone: ZoneInfo, around: date):
    """(start epoch, naive wall datetime) of the rule's runs on days near ``around``."""
    hour, minute = map(int, rule["at"].split(":"))
    for back in range(-3, 10):
        day = around + timedelta(days=back)
        if WEEKDAYS[day.weekday()] not in rule.get("days", WEEKDAYS):
            continue
        first = datetime(day.year, day.month, day.day, hour, minute)
        walls = [first]
        if rule.get("every"):
            eh, em = map(int, rule["end"].split(":"))
            end = datetime(day.year, day.month, day.day, eh, em)
            if end <= first:
                end += timedelta(days=1)
            walls = []
            wall = first
            while wall < end:
                walls.append(wall)
                wall += timedelta(seconds=rule["every"])
        for wall in walls:
            yield int(wall.replace(tzinfo=zone, fold=0).timestamp()), wall


def _answer(rule: dict, start: int, wall: datetime) -> list:
    if rule.get("every"):
        run_id = f"{rule['id'][:50]}-{wall:%Y%m%dT%H%M}"
    else:
        run_id = f"{rule['id'][:55]}-{wall:%Y%m%d}"
    return [rule["id"], run_id, rule.get("action", "on"), start, start + rule["duration"]]


def window(rules: list[dict], zone_name: str, ts: int) -> list | None:
    zone = ZoneInfo(zone_name)
    around = datetime.fromtimestamp(ts, zone).date()
    best = None
    for rule in rules:
        if not rule.get("enabled", True):
            continue
        for start, wall in _starts(rule, zone, around):
            if start <= ts < start + rule["duration"] and (best is None or (start, wall) > best[0]):
                best = ((start, wall), _answer(rule, start, wall))
    return best[1] if best else None


def next_start(rules: list[dict], zone_name: str, ts: int) -> list | None:
    zone = ZoneInfo(zone_name)
    around = datetime.fromtimestamp(ts, zone).date()
    best = None
    for rule in rules:
        if not rule.get("enabled", True):
            continue
        for start, wall in _starts(rule, zone, around):
            key = (start, -wall.timestamp())  # naive: any consistent order of walls
            if start > ts and (best is None or key < best[0]):
                best = (key, _answer(rule, start, wall))
    return best[1] if best else None


def utc(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())

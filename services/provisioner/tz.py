"""UTC-offset changes of an IANA zone, computed here because MicroPython has no zoneinfo."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from nodefleet.contracts import Offset

from .store import RegistryError

DAY = 86_400
HORIZON_DAYS = 400
"""About 13 months: the node gets every change of the coming year, with a margin until the next config."""


class UnknownZone(RegistryError):
    """Not an IANA time zone this machine knows."""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UnknownZone(f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin or UTC") from exc


def _offset(tz: ZoneInfo, ts: int) -> int:
    return int(datetime.fromtimestamp(ts, UTC).astimezone(tz).utcoffset().total_seconds())  # type: ignore[union-attr]


@functools.lru_cache(maxsize=256)
def _offsets_from_day(name: str, day: int) -> tuple[tuple[int, int], ...]:
    tz = zone(name)
    start = day * DAY
    changes = [(start, _offset(tz, start))]
    for d in range(1, HORIZON_DAYS + 1):
        t = start + d * DAY
        current = _offset(tz, t)
        if current == changes[-1][1]:
            continue
        # The change lies within the last day: find its second by bisection.
        low, high = t - DAY, t
        while high - low > 1:
            middle = (low + high) // 2
            if _offset(tz, middle) == changes[-1][1]:
                low = middle
            else:
                high = middle
        changes.append((high, current))
    return tuple(changes)


def offsets(name: str, *, now: float) -> list[Offset]:
    """The offset in force at the start of today (UTC) and every change in the next ~13 months."""
    return [Offset(**{"from": ts, "offset": off}) for ts, off in _offsets_from_day(name, int(now) // DAY)]

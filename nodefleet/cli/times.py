"""Times in and out of the commands: durations (``1h30m``), --since/--until values, and how times are shown."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import click

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
TIME_HELP = "a duration back from now (30s, 15m, 1h, 7d, 1h30m) or an ISO time (2026-11-21T09:00, 2026-11-21T09:00:00Z)"


def parse_duration(text: str) -> float | None:
    """Seconds in ``1h30m``-style text, or None if it is not a duration."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _DURATION.sub("", compact):
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION.findall(compact))


def parse_time(text: str, *, now: float | None = None) -> float:
    """Epoch seconds for ``now``, a duration back from now, or an ISO time (naive = local time)."""
    now = time.time() if now is None else now
    if text.strip().lower() == "now":
        return now
    seconds = parse_duration(text)
    if seconds is not None:
        return now - seconds
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration nor a time: use {TIME_HELP}") from None
    return moment.timestamp()  # a naive time is taken as local time


class TimeArg(click.ParamType):
    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def relative(epoch: float | None, *, now: float | None = None) -> str:
    """``12 s ago``, ``5 min ago``, ``3 h ago``, ``2 d ago``; ``never`` for None."""
    if epoch is None:
        return "never"
    delta = (time.time() if now is None else now) - epoch
    if abs(delta) < 1:
        return "just now"
    suffix = "ago" if delta > 0 else "from now"
    delta = abs(delta)
    for limit, unit, size in ((60, "s", 1), (3600, "min", 60), (86400, "h", 3600)):
        if delta < limit:
            return f"{int(delta // size)} {unit} {suffix}"
    return f"{int(delta // 86400)} d {suffix}"


def local_time(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def iso_time(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

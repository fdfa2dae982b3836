"""The firmware's rule engine (``firmware/rules.py``) for the scheduler, so node and scheduler give the same answers.

The engine is plain code in the subset MicroPython and CPython share (no hal,
no zoneinfo). CPython imports it as ``firmware.rules``: the source tree holds
it there, and the wheel carries that one file under the same name
(``py-modules`` in pyproject.toml). Whether a schedule is valid is asked of
:func:`nodefleet.contracts.scheduling.validate_schedule`, which runs the same engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from firmware import rules as engine

Tz = list[tuple[int, int]]


class Run(NamedTuple):
    """One run of one rule: UTC epoch start and end."""

    rule: str
    run_id: str
    action: str
    start: int
    end: int


def tz_pairs(offsets: Sequence[Any]) -> Tz:
    """Config ``tz`` entries (dicts or Offset models) as the engine's (from, offset) pairs."""
    pairs = []
    for o in offsets:
        if isinstance(o, dict):
            pairs.append((int(o["from"]), int(o["offset"])))
        else:
            pairs.append((int(o.from_), int(o.offset)))
    return pairs


def window(rules: list[dict[str, Any]], tz: Tz, ts: int) -> Run | None:
    found = engine.window(rules, tz, int(ts))
    return Run(*found) if found else None


def next_start(rules: list[dict[str, Any]], tz: Tz, ts: int) -> Run | None:
    found = engine.next_start(rules, tz, int(ts))
    return Run(*found) if found else None

"""The firmware's rule engine (``firmware/rules.py``), loaded as-is so node and scheduler give the same answers.

It is plain code in the subset MicroPython and CPython share (no hal, no
zoneinfo); loading it by path keeps ``firmware/`` a directory of device files.
The package reaches it through ``firmware/rules.py`` beside this module: in the
repository a symbolic link to the firmware's file, in a wheel (package data)
a copy of it, so an install without the source tree has the same engine.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

RULES_PATH = Path(__file__).with_name("firmware") / "rules.py"
_MODULE = "nodefleet_firmware_rules"


def _load() -> ModuleType:
    if _MODULE in sys.modules:
        return sys.modules[_MODULE]
    spec = importlib.util.spec_from_file_location(_MODULE, RULES_PATH)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the rule engine from {RULES_PATH}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE] = module
    spec.loader.exec_module(module)
    return module


engine = _load()

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


def check_schedule(schedule: Any) -> str | None:
    """The firmware's verdict on a schedule: None, or the reason it is rejected."""
    return engine.check_schedule(schedule)

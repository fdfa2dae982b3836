"""One verdict on a schedule: the CPython check (validate_schedule) and the firmware's on MicroPython agree."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from nodefleet.contracts.scheduling import BadSchedule, validate_schedule
from nodefleet.sim import FIRMWARE_DIR, HEAP, interpreter

RUNNER = Path(__file__).with_name("mp_check.py")


def schedule(*rules, **top):
    return {"v": 1, "version": 3, "rules": list(rules), **top}


def rule(**fields):
    return {"id": "r1", "at": "06:00", "duration": 1800, **fields}


VALID = [
    schedule(),
    schedule(rule()),
    schedule(rule(days=["mon", "fri"], action="off", enabled=False)),
    schedule(rule(every=14400, end="22:00", duration=1200)),
    schedule(rule(every=300, end="05:00", duration=300, at="23:00")),  # crosses midnight
    schedule(rule(), rule(id="r2", at="06:10")),  # same action may overlap
    schedule(rule(), rule(id="r2", at="06:10", action="off", enabled=False)),  # a disabled rule conflicts with none
    schedule(rule(id="a.b:c-d_9", at="00:00", duration=86400)),
    schedule(*[rule(id=f"r{i}", at=f"{i % 24:02d}:{i % 60:02d}", duration=60) for i in range(32)]),
]

INVALID = [
    [],
    "schedule",
    None,
    {"version": 1, "rules": []},
    schedule(v=2),
    schedule(extra=1),
    schedule(version=0),
    schedule(version="3"),
    schedule(version=True),
    schedule(version=1.5),
    schedule(rules={"r1": rule()}),
    schedule(*[rule(id=f"r{i}", at=f"{i % 24:02d}:00", duration=60) for i in range(33)]),
    schedule("rule"),
    schedule(rule(id="")),
    schedule(rule(id="has space")),
    schedule(rule(id="x" * 65)),
    schedule(rule(id="café")),
    schedule(rule(id=7)),
    schedule(rule(colour="red")),
    schedule(rule(at="25:99")),
    schedule(rule(at="6:00")),
    schedule(rule(at=600)),
    schedule(rule(duration=0)),
    schedule(rule(duration=86401)),
    schedule(rule(duration="30")),
    schedule(rule(duration=30.0)),
    schedule(rule(duration=True)),
    schedule(rule(days=[])),
    schedule(rule(days=["monday"])),
    schedule(rule(days=["mon", "mon"])),
    schedule(rule(days="mon")),
    schedule(rule(action="toggle")),
    schedule(rule(enabled="yes")),
    schedule(rule(enabled=1)),
    schedule(rule(every=14400)),
    schedule(rule(end="22:00")),
    schedule(rule(every=299, end="22:00", duration=60)),
    schedule(rule(every=86401, end="22:00", duration=60)),
    schedule(rule(every=600, end="22:00", duration=601)),
    schedule(rule(every=600, end="2200", duration=60)),
    schedule(rule(), rule()),
    schedule(rule(), rule(id="r2", at="06:10", action="off")),
    schedule(rule(days=["sun"], at="23:50"), rule(id="r2", at="00:05", days=["mon"], action="off")),  # across the week
]


def cpython(case) -> str | None:
    try:
        validate_schedule(case)
    except BadSchedule as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def firmware(tmp_path_factory) -> list[str | None]:
    cases = tmp_path_factory.mktemp("verdicts") / "cases.jsonl"
    cases.write_text("".join(json.dumps(c) + "\n" for c in VALID + INVALID))
    done = subprocess.run([interpreter(), "-X", f"heapsize={HEAP}", str(RUNNER), str(cases), str(FIRMWARE_DIR)],
                          check=False, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_the_cases_are_what_they_say():
    assert [cpython(c) for c in VALID] == [None] * len(VALID)
    assert all(cpython(c) for c in INVALID)


def test_node_and_backend_give_the_same_verdict_in_the_same_words(firmware):
    assert len(firmware) == len(VALID) + len(INVALID)
    differ = [(case, mine, node) for case, mine, node in zip(VALID + INVALID, map(cpython, VALID + INVALID), firmware)
              if mine != node]
    assert not differ, f"{len(differ)} differ (case, CPython, MicroPython), e.g. {differ[:3]}"

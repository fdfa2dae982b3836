"""Golden vectors: the rule engine gives zoneinfo's answers on MicroPython and on CPython, DST edges included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nodefleet.sim import FIRMWARE_DIR, HEAP, interpreter

from .make_vectors import VECTORS, cases

RUNNER = Path(__file__).with_name("mp_rules.py")


def stored() -> list[dict]:
    return [json.loads(line) for line in VECTORS.read_text().splitlines()]


def expected(case: dict) -> list:
    return [case["window"], case["next"]]


def test_vectors_are_still_what_zoneinfo_says():
    assert stored() == json.loads(json.dumps(cases(), sort_keys=True)), (
        "vectors/rules.jsonl is out of date: run python -m tests.scheduler.make_vectors")


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_engine_agrees_with_the_vectors(runtime):
    command = [interpreter(), "-X", f"heapsize={HEAP}"] if runtime == "micropython" else [sys.executable]
    done = subprocess.run([*command, str(RUNNER), str(VECTORS), str(FIRMWARE_DIR)],
                          check=False, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    got = [json.loads(line) for line in done.stdout.splitlines()]
    cases = stored()
    assert len(got) == len(cases)
    wrong = [(c["name"], c["ts"], g, expected(c)) for c, g in zip(cases, got) if g != expected(c)]
    assert not wrong, f"{len(wrong)} of {len(cases)} differ, e.g. {wrong[:3]}"


def test_the_vectors_cover_the_edges():
    cases = stored()
    names = {c["name"] for c in cases}
    assert any("spring-forward" in n for n in names) and any("autumn" in n for n in names)
    assert any("midnight" in n for n in names)
    assert sum(c["window"] is not None for c in cases) > 40
    # The repeated autumn hour runs once: the second 02:30 (01:30 UTC) finds no window.
    autumn = [c for c in cases if c["name"].startswith("autumn repeated")]
    assert [c["window"] is not None for c in autumn] == [False, True, True, False, False, False, False]

"""The firmware decodes every contract fixture on the real MicroPython interpreter."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from nodefleet import contracts
from nodefleet.sim import FIRMWARE_DIR, HEAP, interpreter

FIXTURES = Path(contracts.__file__).parent / "fixtures"


def test_firmware_accepts_every_fixture(tmp_path):
    script = Path(__file__).with_name("mp_fixtures.py")
    done = subprocess.run([interpreter(), "-X", f"heapsize={HEAP}", str(script), str(FIXTURES), str(FIRMWARE_DIR)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    results = {line["name"]: line["error"] for line in lines if "name" in line}
    assert set(results) == {p.stem for p in FIXTURES.glob("*.json")}
    assert {name: err for name, err in results.items() if err} == {}
    # set_restart.json asks for a restart; the firmware schedules one.
    assert lines[-1] == {"restart_requested": True}

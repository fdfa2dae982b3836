"""NodeLogic windows computed on MicroPython agree with a datetime reference on CPython."""

from __future__ import annotations

import json
import random
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nodefleet.contracts import WEEKDAYS
from nodefleet.sim import FIRMWARE_DIR, HEAP, interpreter


def reference(rules: list[dict], local_ts: int):
    """The open window by calendar arithmetic: (rule, run id, action, seconds left) of the latest start."""
    now = datetime.fromtimestamp(local_ts, UTC)
    best = None
    for rule in rules:
        if not rule.get("enabled", True):
            continue
        hour, minute = map(int, rule["at"].split(":"))
        for back in (0, 1):
            day = (now - timedelta(days=back)).date()
            start = datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)
            end = start + timedelta(seconds=rule["duration"])
            if WEEKDAYS[day.weekday()] in rule.get("days", WEEKDAYS) and start <= now < end:
                if best is None or start > best[0]:
                    best = (start, [rule["id"], f"{rule['id']}-{day:%Y%m%d}", rule.get("action", "on"),
                                    int((end - now).total_seconds())])
    return best[1] if best else None


def test_windows_match_the_calendar(tmp_path):
    rng = random.Random(7)
    cases = [
        # Across midnight: Saturday 23:30 for an hour is still open on Sunday 00:10.
        ([{"id": "late", "at": "23:30", "duration": 3600, "days": ["sat"]}],
         int(datetime(2026, 11, 22, 0, 10, tzinfo=UTC).timestamp())),
        # Leap day and year ends.
        ([{"id": "leap", "at": "00:00", "duration": 60}], int(datetime(2028, 2, 29, 0, 0, 30, tzinfo=UTC).timestamp())),
        ([{"id": "nye", "at": "23:59", "duration": 120}], int(datetime(2027, 1, 1, 0, 0, 10, tzinfo=UTC).timestamp())),
    ]
    for _ in range(300):
        rules = []
        for i in range(rng.randint(1, 3)):
            rules.append({"id": f"r{i}", "at": f"{rng.randrange(24):02d}:{rng.randrange(60):02d}",
                          "duration": rng.choice([60, 1800, 3600 * 5, 86400]),
                          "days": sorted(rng.sample(WEEKDAYS, rng.randint(1, 7)), key=WEEKDAYS.index),
                          "action": rng.choice(["on", "off"]), "enabled": rng.random() > 0.1})
        if rng.random() < 0.3:
            del rules[0]["days"]  # omitted = every day
        cases.append((rules, rng.randrange(1_767_225_600, 1_893_456_000)))
    path = tmp_path / "cases.json"
    path.write_text("".join(json.dumps(case) + "\n" for case in cases))
    script = Path(__file__).with_name("mp_logic.py")
    done = subprocess.run([interpreter(), "-X", f"heapsize={HEAP}", str(script), str(path), str(FIRMWARE_DIR)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got = [json.loads(line) for line in done.stdout.splitlines()]
    expected = [reference(rules, ts) for rules, ts in cases]
    mismatches = [(c, g, e) for c, g, e in zip(cases, got, expected) if g != e]
    assert len(got) == len(cases) and not mismatches, mismatches[:3]
    assert sum(e is not None for e in expected) > 30  # the random cases do hit open windows

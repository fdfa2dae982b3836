"""Write vectors/rules.jsonl: rule-engine cases with answers from CPython's zoneinfo.

Run ``python -m tests.scheduler.make_vectors`` after changing the engine's
documented behaviour; the test checks the file still matches zoneinfo, then
runs the firmware's engine on MicroPython and on CPython against it.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

from . import reference as ref
from .reference import utc

VECTORS = Path(__file__).with_name("vectors") / "rules.jsonl"
SPAN = (utc(2025, 1, 1), utc(2029, 1, 1))
ZONES = ("Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Kolkata", "UTC")

# Named edges: (name, zone, rules, probe times).
EDGES = [
    ("spring-forward 02:30 rule starts 03:30 CEST", "Europe/Berlin",
     [{"id": "early", "at": "02:30", "duration": 1800}],
     [utc(2026, 3, 29, 0, 59), utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 1, 29, 59), utc(2026, 3, 29, 1, 30),
      utc(2026, 3, 29, 1, 59, 59), utc(2026, 3, 29, 2, 0), utc(2026, 3, 28, 12, 0)]),
    ("spring-forward 02:30 rule for an hour", "Europe/Berlin",
     [{"id": "early", "at": "02:30", "duration": 3600, "action": "off"}],
     [utc(2026, 3, 29, 1, 10), utc(2026, 3, 29, 2, 29), utc(2026, 3, 29, 2, 30)]),
    ("autumn repeated hour runs once, first 02:30", "Europe/Berlin",
     [{"id": "early", "at": "02:30", "duration": 1800}],
     [utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 0, 45), utc(2026, 10, 25, 1, 0),
      utc(2026, 10, 25, 1, 30), utc(2026, 10, 25, 1, 45), utc(2026, 10, 24, 23, 59)]),
    ("autumn interval every 30 min 01:00-04:00", "Europe/Berlin",
     [{"id": "pump", "at": "01:00", "duration": 600, "every": 1800, "end": "04:00"}],
     [utc(2026, 10, 24, 23, 5), utc(2026, 10, 25, 0, 5), utc(2026, 10, 25, 0, 35), utc(2026, 10, 25, 1, 5),
      utc(2026, 10, 25, 1, 35), utc(2026, 10, 25, 2, 5), utc(2026, 10, 25, 2, 40)]),
    ("spring interval runs in the gap merge with the hour after", "Europe/Berlin",
     [{"id": "pump", "at": "01:00", "duration": 600, "every": 1800, "end": "05:00"}],
     [utc(2026, 3, 28, 23, 50), utc(2026, 3, 29, 0, 35), utc(2026, 3, 29, 0, 59), utc(2026, 3, 29, 1, 5),
      utc(2026, 3, 29, 1, 29), utc(2026, 3, 29, 1, 35), utc(2026, 3, 29, 2, 5)]),
    ("window crossing midnight, Saturday 23:30 for an hour", "Europe/Berlin",
     [{"id": "late", "at": "23:30", "duration": 3600, "days": ["sat"]}],
     [utc(2026, 11, 21, 22, 29), utc(2026, 11, 21, 22, 30), utc(2026, 11, 21, 23, 10), utc(2026, 11, 21, 23, 30)]),
    ("interval span crossing midnight 22:00-02:00 every 2 h", "Europe/Berlin",
     [{"id": "night", "at": "22:00", "duration": 1200, "every": 7200, "end": "02:00", "days": ["fri"]}],
     [utc(2026, 11, 20, 21, 10), utc(2026, 11, 20, 23, 10), utc(2026, 11, 21, 0, 30), utc(2026, 11, 21, 1, 30)]),
    ("every 4 h for 20 min between 06:00 and 22:00", "Europe/Berlin",
     [{"id": "water", "at": "06:00", "duration": 1200, "every": 14400, "end": "22:00"}],
     [utc(2026, 11, 21, 5, 10), utc(2026, 11, 21, 9, 5), utc(2026, 11, 21, 17, 19), utc(2026, 11, 21, 21, 0)]),
    ("New York spring and autumn", "America/New_York",
     [{"id": "a", "at": "02:30", "duration": 1800}, {"id": "b", "at": "01:30", "duration": 1800, "action": "off"}],
     [utc(2026, 3, 8, 6, 0), utc(2026, 3, 8, 7, 15), utc(2026, 11, 1, 5, 40), utc(2026, 11, 1, 6, 40),
      utc(2026, 11, 1, 6, 15)]),
    ("Sydney: the southern hemisphere moves the other way", "Australia/Sydney",
     [{"id": "a", "at": "02:30", "duration": 3600}],
     [utc(2026, 4, 4, 15, 20), utc(2026, 4, 4, 16, 10), utc(2026, 10, 3, 15, 40), utc(2026, 10, 3, 16, 10)]),
]


@functools.cache
def _offsets(zone: str) -> list[dict[str, int]]:
    return ref.tz_offsets(zone, *SPAN)


def _random_cases(rng: random.Random) -> list[tuple[str, str, list[dict], int]]:
    cases = []
    zone_edges = {zone: [o["from"] for o in _offsets(zone)[1:]] for zone in ZONES}
    for i in range(240):
        zone = rng.choice(ZONES)
        rules = []
        for j in range(rng.randint(1, 3)):
            rule = {"id": f"r{j}", "at": f"{rng.randrange(24):02d}:{rng.randrange(0, 60, 5):02d}",
                    "duration": rng.choice([60, 900, 1800, 3600, 5 * 3600]), "action": rng.choice(["on", "off"])}
            if rng.random() < 0.5:
                rule["days"] = sorted(rng.sample(ref.WEEKDAYS, rng.randint(1, 7)), key=ref.WEEKDAYS.index)
            if rng.random() < 0.35:
                rule["every"] = rng.choice([1800, 3600, 7200, 14400])
                rule["duration"] = min(rule["duration"], rule["every"])
                rule["end"] = f"{rng.randrange(24):02d}:{rng.choice(['00', '30'])}"
            if rng.random() < 0.1:
                rule["enabled"] = False
            rules.append(rule)
        edges = zone_edges[zone]
        # Most probes near a real transition of the zone, where the answers are hard.
        base = rng.choice(edges) if edges and rng.random() < 0.7 else rng.randrange(utc(2025, 6, 1), utc(2028, 6, 1))
        cases.append((f"random {i}", zone, rules, base + rng.randrange(-6 * 3600, 6 * 3600)))
    return cases


def cases() -> list[dict]:
    out = []
    for name, zone, rules, probes in EDGES:
        for ts in probes:
            out.append({"name": name, "zone": zone, "rules": rules, "ts": ts})
    out += [{"name": n, "zone": z, "rules": r, "ts": ts} for n, z, r, ts in _random_cases(random.Random(11))]
    for case in out:
        case["tz"] = [[o["from"], o["offset"]] for o in _offsets(case["zone"])]
        case["window"] = ref.window(case["rules"], case["zone"], case["ts"])
        case["next"] = ref.next_start(case["rules"], case["zone"], case["ts"])
    return out


def main() -> None:
    VECTORS.parent.mkdir(exist_ok=True)
    VECTORS.write_text("".join(json.dumps(case, sort_keys=True) + "\n" for case in cases()))
    print(f"wrote {VECTORS}")


if __name__ == "__main__":
    main()

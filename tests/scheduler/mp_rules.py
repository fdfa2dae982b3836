# Runs on MicroPython (and CPython): the firmware's rule engine on each vector line; one JSON line per case.
import json
import sys

sys.path.insert(0, sys.argv[2])
import rules

with open(sys.argv[1]) as f:
    for line in f:  # one case per line: the whole file would not fit the heap
        case = json.loads(line)
        tz = [(int(a), int(b)) for a, b in case["tz"]]
        w = rules.window(case["rules"], tz, case["ts"])
        n = rules.next_start(case["rules"], tz, case["ts"])
        print(json.dumps([list(w) if w else None, list(n) if n else None]))

# Runs on MicroPython: the firmware's own schedule check (rulecheck.check_schedule) on each line; one JSON line per case.
import json
import sys

sys.path.insert(0, sys.argv[2])
import rulecheck

with open(sys.argv[1]) as f:
    for line in f:  # one case per line: the whole file would not fit the heap
        print(json.dumps(rulecheck.check_schedule(json.loads(line))))

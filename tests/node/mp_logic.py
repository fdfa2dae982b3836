# Runs on MicroPython: logic.window for each case of a JSON-lines file; one JSON line per case.
import json
import sys

sys.path.insert(0, sys.argv[2])
import logic  # noqa: E402

with open(sys.argv[1]) as f:
    for line in f:  # one case per line: the whole file would not fit the heap
        rules, local_ts = json.loads(line)
        w = logic.window(rules, local_ts)
        print(json.dumps(list(w) if w else None))

# Runs on MicroPython: decode every contract fixture with the firmware's own code; one JSON line per file.
import json
import os
import sys

fixtures, firmware = sys.argv[1], sys.argv[2]
sys.path.insert(0, firmware)

import commands  # noqa: E402
import hal  # noqa: E402
import node  # noqa: E402
import rulecheck  # noqa: E402
import settings  # noqa: E402
import store  # noqa: E402


class App:
    SLEEPS = True  # set/sleep taken, as in normal mode
    restarted = False

    def __init__(self):
        self.node = node.Node("off", lambda: None)
        self.sleep_cmd = None

    def restart_soon(self):
        App.restarted = True

    def send(self, *args):
        pass

    def info(self):
        return {}


# The fixtures describe one moment (the ts of set_time.json): the node's clock is put there, whatever today is.
with open(fixtures + "/set_time.json") as f:
    hal.set_time(json.load(f)["ts"])

for name in sorted(os.listdir(fixtures)):
    if not name.endswith(".json"):
        continue
    with open(fixtures + "/" + name, "rb") as f:
        raw = f.read()
    stem = name[:-5]
    err = None
    try:
        obj = json.loads(raw)
        if stem.startswith("set_"):
            # Each command meets a fresh node (set_stop would refuse the switch fixtures after it).
            store.remove("state.json")
            # The clock the fixtures were written at (state.json's ts), so no fixture depends on today's date.
            hal.set_time(1795326600)
            app = App()
            what = stem[4:].split("_")[0]
            cid, err = commands.handle(app, what, raw)
            if err is None and "id" in obj and cid != obj["id"]:
                err = "id not kept"
        elif stem == "config":
            err = settings.check_config(obj)
        elif stem == "schedule":
            err = rulecheck.check_schedule(obj)
        elif not isinstance(obj, dict) or obj.get("v") != 1:
            err = "not a v1 object"
    except Exception as exc:
        err = repr(exc)
    print(json.dumps({"name": stem, "error": err}))
print(json.dumps({"restart_requested": App.restarted}))

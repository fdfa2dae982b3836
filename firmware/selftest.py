# The trial boot's self-test (docs/ota.md): after an update the new firmware stays only if this passes, once
# the node is back on the broker and within the trial deadline. None: keep this firmware; else why not.
import gc

import hal
import store

MIN_FREE = 8 * 1024


def run(app):
    if not app.link.up:
        return "not connected to the broker"
    store.save("selftest.json", {"ok": 1})
    ok = store.load("selftest.json") == {"ok": 1}
    store.remove("selftest.json")
    if not ok:
        return "flash: a file written cannot be read back"
    if hal.wifi_ok() is not True:
        return "wifi not joined"
    gc.collect()
    if gc.mem_free() < MIN_FREE:
        return "only %d bytes of heap free" % gc.mem_free()
    return None

# Error log: a bounded ring on flash, published on the log topic once connected.
import time

import store

_FILE = "errlog.json"
SIZE = 16
MSG_MAX = 300
TRACE_MAX = 1500
WARN_MAX = 30


class ErrLog:
    def __init__(self):
        saved = store.load(_FILE, None) or {}
        self.items = saved.get("items", [])
        self.next_seq = saved.get("next", 0)
        self.sent = saved.get("sent", 0)
        self.publish = None
        self.window = time.ticks_ms()
        self.warnings = 0
        self.suppressed = 0

    def add(self, code, msg, level="error", ts=None, reset_cause=None, trace=None):
        if level == "warning" and not self._allow():
            return
        msg = str(msg)
        if self.suppressed:
            msg = "%s (%d warnings suppressed before this one)" % (msg, self.suppressed)
            self.suppressed = 0
        item = {"v": 1, "seq": self.next_seq, "level": level, "code": code, "msg": msg[:MSG_MAX]}
        if ts is not None:
            item["ts"] = ts
        if reset_cause:
            item["reset_cause"] = reset_cause
        if trace:
            item["trace"] = trace[-TRACE_MAX:]
        self.next_seq += 1
        self.items.append(item)
        if len(self.items) > SIZE:
            self.items.pop(0)
        self._save()
        if self.publish is not None:
            self.publish(item)

    def _allow(self):
        # Bad input from outside must not wear out the flash: at most WARN_MAX warnings a minute.
        now = time.ticks_ms()
        if time.ticks_diff(now, self.window) > 60000:
            self.window = now
            self.warnings = 0
        self.warnings += 1
        if self.warnings > WARN_MAX:
            self.suppressed += 1
            return False
        return True

    def unsent(self):
        return [i for i in self.items if i["seq"] >= self.sent]

    def mark_sent(self, seq):
        if seq >= self.sent:
            self.sent = seq + 1
            self._save()

    def _save(self):
        store.save(_FILE, {"items": self.items, "next": self.next_seq, "sent": self.sent})

# Error log: a bounded ring on flash, published on the log topic once connected.
import json
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
        items = saved.get("items", [])
        # Each entry kept as its JSON text: far smaller in RAM than a dict, and published as it is.
        self.raw = [json.dumps(i).encode() for i in items]
        self.seqs = [i["seq"] for i in items]
        self.next_seq = saved.get("next", 0)
        self.sent = saved.get("sent", 0)
        self.publish = None  # publish(seq, payload bytes)
        self.window = time.ticks_ms()
        self.warnings = 0
        self.suppressed = 0

    @property
    def items(self):
        return [json.loads(r) for r in self.raw]

    def add(self, code, msg, level="error", ts=None, reset_cause=None, trace=None):
        if level == "warning" and not self._allow():
            return
        msg = str(msg)
        if self.suppressed:
            msg = "%s (%d warnings suppressed before this one)" % (msg, self.suppressed)
            self.suppressed = 0
        seq = self.next_seq
        item = {"v": 1, "seq": seq, "level": level, "code": code, "msg": msg[:MSG_MAX]}
        if ts is not None:
            item["ts"] = ts
        if reset_cause:
            item["reset_cause"] = reset_cause
        if trace:
            item["trace"] = trace[-TRACE_MAX:]
        raw = json.dumps(item).encode()
        item = None
        self.next_seq += 1
        self.raw.append(raw)
        self.seqs.append(seq)
        if len(self.raw) > SIZE:
            self.raw.pop(0)
            self.seqs.pop(0)
        self._save()
        if self.publish is not None:
            self.publish(seq, raw)

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

    def first_unsent(self):
        """(seq, payload) of the oldest entry the broker has not acknowledged, or None."""
        for i, s in enumerate(self.seqs):
            if s >= self.sent:
                return s, self.raw[i]
        return None

    def mark_sent(self, seq):
        if seq >= self.sent:
            self.sent = seq + 1
            self._save()

    def _save(self):
        parts = [b'{"items": [']
        for i, r in enumerate(self.raw):
            if i:
                parts.append(b", ")
            parts.append(r)
        parts.append(b'], "next": %d, "sent": %d}' % (self.next_seq, self.sent))
        store.save_parts(_FILE, parts)

# Error log: a bounded ring on flash, published on the log topic once connected.
import json
import time

import store

_FILE = "errlog.json"
SIZE = 16
MSG_MAX = 300
TRACE_MAX = 1500
WARN_MAX = 30
RECENT = 5


class ErrLog:
    """The ring lives on flash only, one entry a line (the file is still one JSON object), so a full ring,
    crash traces and all, costs no heap: entries are read back one at a time to publish or to show."""

    def __init__(self):
        self.next_seq = 0
        self.sent = 0
        self.count = 0
        self.publish = None  # publish(seq, payload bytes)
        self.window = time.ticks_ms()
        self.warnings = 0
        self.suppressed = 0
        try:
            with open(_FILE, "rb") as f:
                head = json.loads(f.readline() + b"]}")
            self.next_seq, self.sent = head["next"], head["sent"]
            for _ in self._entries():
                self.count += 1
        except (OSError, ValueError, KeyError):
            self._convert(store.load(_FILE, None) or {})

    def _convert(self, saved):
        # A ring written whole (an older firmware), or none: rewritten one entry a line.
        self.next_seq = saved.get("next", 0)
        self.sent = saved.get("sent", 0)
        self.count = 0
        items = saved.get("items", [])
        if items:
            self._write([json.dumps(i).encode() for i in items], False)

    def _entries(self):
        try:
            f = open(_FILE, "rb")
        except OSError:
            return
        with f:
            f.readline()
            while True:
                line = f.readline()
                if not line:
                    return
                line = line.strip()
                if line.startswith(b","):
                    line = line[1:].strip()
                if line.startswith(b"{"):
                    yield line

    def _write(self, extra=(), keep=True):
        # Stream the kept entries and the new ones into a new file, dropping the oldest beyond SIZE.
        skip = max(0, (self.count if keep else 0) + len(extra) - SIZE)
        n = 0
        tmp = _FILE + ".tmp"
        with open(tmp, "wb") as out:
            out.write(b'{"next": %d, "sent": %d, "items": [\n' % (self.next_seq, self.sent))
            for line in (self._entries() if keep else ()):
                if skip:
                    skip -= 1
                    continue
                out.write(b", " + line + b"\n" if n else line + b"\n")
                n += 1
            for line in extra:
                if skip:
                    skip -= 1
                    continue
                out.write(b", " + line + b"\n" if n else line + b"\n")
                n += 1
            out.write(b"]}\n")
        store.replace(tmp, _FILE)
        self.count = n

    @property
    def items(self):
        """The newest entries (at most RECENT), for the local page."""
        recent = []
        for line in self._entries():
            recent.append(line)
            if len(recent) > RECENT:
                recent.pop(0)
        return [json.loads(r) for r in recent]

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
        self._write((raw,))
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
        entries = self._entries()
        try:
            for line in entries:
                seq = json.loads(line)["seq"]
                if seq >= self.sent:
                    return seq, line
            return None
        finally:
            entries.close()  # closes the file now, not when the generator is collected

    def mark_sent(self, seq):
        if seq >= self.sent:
            self.sent = seq + 1
            self._write()

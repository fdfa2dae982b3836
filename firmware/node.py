# The switch: relay, mode, the rule in force, runs already executed; persisted on flash.
import clock
import hal
import store
from counter import Counter

_FILE = "state.json"
RUNS_KEPT = 24
STOPPED = "node is stopped: send set/stop with {\"resume\": true} first"


class Node:
    def __init__(self, power_on, on_change):
        s = store.load(_FILE, None) or {}
        self.logic_enabled = s.get("logic", True)
        self.stopped = s.get("stopped", False)
        self.runs = s.get("runs", [])
        self.rules = []
        self.relay = False
        self.rule = None
        self.run_id = None
        self.until = None
        self.manual = False
        self.seq = Counter("state")
        self.state_seq = 0
        self.on_change = on_change
        # After power loss the relay starts OFF; "schedule" resumes an open window once time is valid.
        self.resume_pending = power_on == "schedule"
        if power_on == "last" and s.get("relay") and not self.stopped:
            until = s.get("until")
            if until is None or until > clock.now():
                self.relay = True
                self.rule, self.run_id, self.until, self.manual = s.get("rule"), s.get("run_id"), until, s.get("manual", False)
        hal.relay(self.relay)

    def mode(self):
        if self.stopped:
            return "stopped"
        if not self.logic_enabled:
            return "logic_disabled"
        return "manual" if self.manual else "auto"

    def payload(self):
        p = {"v": 1, "seq": self.state_seq, "relay": "ON" if self.relay else "OFF", "mode": self.mode(),
             "time_valid": clock.valid()}
        for k in ("rule", "run_id"):
            if getattr(self, k) is not None:
                p[k] = getattr(self, k)
        if clock.valid():
            # Without valid time an epoch would mislead; the timer still runs on the local clock.
            p["ts"] = clock.now()
            if self.until is not None:
                p["until"] = self.until
        return p

    def _save(self):
        store.save(_FILE, {"relay": self.relay, "rule": self.rule, "run_id": self.run_id, "until": self.until,
                           "manual": self.manual, "logic": self.logic_enabled, "stopped": self.stopped,
                           "runs": self.runs})

    def changed(self):
        self.state_seq = self.seq.next()
        self._save()
        self.on_change()

    def _set(self, relay, rule=None, run_id=None, until=None, manual=False):
        self.relay = relay
        self.rule, self.run_id, self.until, self.manual = rule, run_id, until, manual
        hal.relay(relay)
        self.changed()

    def _record(self, run_id):
        self.runs.append(run_id)
        if len(self.runs) > RUNS_KEPT:
            self.runs.pop(0)

    def switch(self, state, for_=None, until=None, run_id=None):
        """Apply a switch command; returns an error reason or None."""
        if run_id is not None and run_id in self.runs:
            return None  # this run was executed already: a no-op, never a second run
        target = (not self.relay) if state == "TOGGLE" else state == "ON"
        if self.stopped and target:
            return STOPPED
        if run_id is not None and not self.logic_enabled:
            return "NodeLogic is disabled: send set/logic {\"enabled\": true} first"
        now = clock.now()
        end = None
        if for_:
            end = now + for_
        elif until is not None:
            end = int(until)
            if clock.valid() and end <= now:
                return "until is in the past"
        if not target:
            end = None
        if run_id is not None:
            self._record(run_id)
            self._set(target, run_id.rsplit("-", 1)[0], run_id, end)
        else:
            self._set(target, None, None, end, self.logic_enabled)
        return None

    def set_logic(self, enabled):
        self.logic_enabled = enabled
        self.manual = False
        if not enabled:
            self.rule = self.run_id = None
        self.changed()

    def stop(self, resume):
        if resume:
            self.stopped = False
            self.changed()
        else:
            self.stopped = True
            self._set(False)

    def shift(self, delta):
        # The clock jumped while it was not valid: keep the remaining time of a timer.
        if self.until is not None:
            self.until += delta

    def tick(self):
        now = clock.now()
        if self.until is not None and now >= self.until:
            self._set(False)
        if self.stopped or not self.logic_enabled or not clock.valid() or not self.rules:
            return
        import logic  # not loaded by a node without rules (the download mode runs none)

        w = logic.window_now(self.rules, now)
        if self.resume_pending:
            self.resume_pending = False
            if w is not None:
                self._fire(w, now)
            return
        if w is not None and w[1] not in self.runs:
            self._fire(w, now)

    def _fire(self, w, now):
        rule_id, run_id, action, left = w
        if run_id not in self.runs:
            self._record(run_id)
        self._set(action == "on", rule_id, run_id, now + left)

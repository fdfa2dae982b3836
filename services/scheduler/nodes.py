"""What the scheduler knows of each node: its last valid schedule, tz, availability (a planned sleep included) and
reported runs."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from nodefleet.contracts import ONLINE, SLEEPING, Config, State
from nodefleet.contracts.scheduling import BadSchedule, validate_schedule

from .rulebook import Run, Tz, tz_pairs

SEEN_KEPT = 64  # run ids a node reported, kept per node (the node itself keeps 24)


@dataclass
class NodeView:
    name: str
    schedule: dict[str, Any] | None = None
    rejected: str | None = None
    tz: Tz = field(default_factory=list)
    online: bool | None = None
    asleep: bool = False
    """Status ``sleeping``: the node went to sleep by plan, and said so."""
    sleep_until: float | None = None
    """When it meant to wake (its last state's ``sleep_until``)."""
    overslept: bool = False
    """Still asleep a wake grace after ``sleep_until``: flagged, and its runs are backed up again."""
    mode: str | None = None
    relay: str | None = None
    run_id: str | None = None
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    missed: dict[str, Run] = field(default_factory=dict)
    generation: int = 0
    planned: set[str] = field(default_factory=set)
    reserved: set[str] = field(default_factory=set)
    """Run ids whose backup this instance claimed ahead of the due second (``Planner`` with ``ahead``)."""

    @property
    def rules(self) -> list[dict[str, Any]]:
        return self.schedule.get("rules", []) if self.schedule else []

    def saw(self, run_id: str) -> bool:
        return run_id in self.seen

    def note_state(self, state: State) -> None:
        self.mode, self.relay, self.run_id = state.mode, state.relay, state.run_id
        self.sleep_until = state.sleep_until
        if state.run_id:
            self.seen[state.run_id] = None
            self.seen.move_to_end(state.run_id)
            while len(self.seen) > SEEN_KEPT:
                self.seen.popitem(last=False)

    def note_status(self, payload: bytes) -> bool:
        """Record availability; True if the node just came online."""
        text = payload.decode(errors="replace").strip()
        online = text == ONLINE
        came = online and self.online is not True
        self.online = online
        self.asleep = text == SLEEPING
        if not self.asleep:
            self.overslept = False
        return came

    def asleep_by_plan(self, now: float, wake_grace: float) -> bool:
        """Asleep and not yet late: a wake at ``sleep_until`` plus ``wake_grace`` to boot and reconnect."""
        return self.asleep and self.sleep_until is not None and now < self.sleep_until + wake_grace


def parse_schedule(payload: bytes) -> dict[str, Any] | None:
    """A retained schedule as the node would take it: None for an empty (deleted) one, BadSchedule if rejected."""
    if not payload:
        return None
    try:
        raw = json.loads(payload)
    except ValueError as exc:
        raise BadSchedule(f"schedule is not valid JSON ({exc})") from None
    except RecursionError:
        # json.loads recurses once per nesting level: a few thousand brackets are a rejection, not a crash.
        raise BadSchedule("schedule is not valid JSON (nested too deeply)") from None
    validate_schedule(raw)
    return raw


def parse_tz(payload: bytes) -> Tz | None:
    """The tz offsets of a retained config, or None if the config is not one the node would take."""
    if not payload:
        return []
    try:
        return tz_pairs(Config.model_validate_json(payload).tz)
    except ValidationError:
        return None

"""Scheduler contract: run events, and the requests the CLI sends to the scheduler.

A node's schedule itself is the retained :class:`~nodefleet.contracts.payloads.Schedule`
on ``Topics.schedule(node)``.  Changes go through the scheduler
(:class:`ScheduleChange`, ``scheduler/set``), which applies each to the
current version and publishes the next one, so two changes at the same moment
both land; a schedule published on the topic directly is taken too.  The scheduler publishes one
:class:`RunEvent` per run outcome on ``Topics.scheduler_events()`` (QoS 1); the
telemetry service stores them and answers
:class:`~nodefleet.contracts.queries.RunEventsQuery` with :class:`RunEventRow`
for ``nodefleet schedule history``.  The scheduler's own event table is its
claim store, not a history anyone reads.

:func:`validate_schedule` is the one verdict on a schedule for all CPython code
(the CLI, the scheduler): the node's own checks first (``firmware/rulecheck.py``,
the same file the node runs, with the node's wording), then the model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from firmware import rulecheck

from ..errors import InputError

from .payloads import Epoch, Identifier, NodeName, Part, Payload, Schedule, ShortText, Text
from .queries import Query

SCHEDULER_SERVICE = "scheduler"
SCHEDULE_REJECTED = "bad_schedule"
"""Code of the log entry a node writes (firmware/normal.py), and of the scheduler's error event, when a
retained schedule is refused; the previous version stays in force (the node's ``State.schedule``)."""



class BadSchedule(InputError):
    """A schedule the contract or the rule engine rejects; the message names the problem."""


def validate_schedule(raw: Any) -> Schedule:
    """``raw`` (decoded JSON) as the node would take it, or BadSchedule with the reason, in the node's words.

    The engine's check is the node's own (unknown fields, bad times, conflicting
    overlaps); the model follows, so nothing it refuses passes either
    (tests/scheduler/test_schedule_verdicts.py runs both sides on the same cases).
    """
    reason = rulecheck.check_schedule(raw)
    if reason:
        raise BadSchedule(reason)
    try:
        return Schedule.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        # A message that names its rule says it in words already (the node's own wording).
        if first["type"] == "hhmm":
            raise BadSchedule(first["msg"]) from None
        raise BadSchedule(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


RunKind = Literal["run", "backup", "miss", "skipped"]
"""run: the node executed it; backup: the scheduler sent it; miss: the node was
offline (or the window ended) at the due time; skipped: stopped / logic disabled."""


class RunRecord(Part):
    """One outcome of one run; (node, run_id, kind) is recorded once, whichever instance saw it."""

    ts: Epoch
    node: NodeName
    run_id: Identifier
    rule: Identifier
    kind: RunKind
    action: Literal["on", "off"]
    start: Epoch
    end: Epoch
    instance: ShortText
    detail: Text | None = None
    sent: Epoch | None = None
    """backup only: when the broker acknowledged the command (the event is published after that)."""


class RunEvent(Payload, RunRecord):
    """A RunRecord as published on ``Topics.scheduler_events()``."""


class RunEventRow(RunRecord):
    """A RunRecord as the telemetry service stored it; ``received`` is when telemetry got it."""

    received: Epoch


class ShowQuery(Query):
    """``scheduler/show``: the schedule the scheduler holds for a node, and its open and next run."""

    action: Annotated[str, Field(exclude=True)] = "show"
    node: NodeName


class RunView(Query):
    rule: Identifier
    run_id: Identifier
    action: Literal["on", "off"]
    start: Epoch
    end: Epoch


class ShowAnswer(Query):
    node: NodeName
    schedule: dict[str, Any] | None = None
    rejected: str | None = None
    online: bool | None = None
    mode: str | None = None
    open: RunView | None = None
    next: RunView | None = None
    sleep_until: float | None = None
    """Set while the node sleeps by plan (status ``sleeping``): when it meant to wake."""
    overslept: bool = False
    """Still asleep a wake grace after ``sleep_until``."""


class ScheduleChange(Query):
    """``scheduler/set``: add ``rule`` to a node's schedule (replacing a rule with its id), or make it the only rule.

    Every scheduler instance receives the request; ``change`` identifies it, so
    it is applied once whichever instances answer.
    """

    action: Annotated[str, Field(exclude=True)] = "set"
    node: NodeName
    change: Identifier
    rule: dict[str, Any]
    replace: bool = False


class ScheduleChanged(Query):
    """The answer to a ScheduleChange: the schedule now retained for the node."""

    node: NodeName
    schedule: dict[str, Any]

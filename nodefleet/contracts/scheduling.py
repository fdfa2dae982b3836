"""Scheduler contract: run events, and the requests the CLI sends to the scheduler.

A node's schedule itself is the retained :class:`~nodefleet.contracts.payloads.Schedule`
on ``Topics.schedule(node)``; anyone may set it.  The scheduler publishes one
:class:`RunEvent` per run outcome on ``Topics.scheduler_events()`` and keeps them
for ``nodefleet schedule history`` (its own table, not the telemetry service's).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from .payloads import Epoch, Identifier, NodeName, Part, Payload, ShortText, Text
from .queries import Query

SCHEDULER_SERVICE = "scheduler"

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


class RunEvent(Payload, RunRecord):
    """A RunRecord as published on ``Topics.scheduler_events()``."""


class HistoryQuery(Query):
    """``scheduler/history``: a node's run events, newest first."""

    action: Annotated[str, Field(exclude=True)] = "history"
    node: NodeName
    limit: Annotated[int, Field(ge=1, le=10_000)] = 100


class HistoryRow(RunRecord):
    """A recorded RunRecord; ``sent`` is when a backup was handed to the broker."""

    sent: Epoch | None = None


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

"""The fleet requests the scheduler answers: ``show`` (what it holds for a node) and ``set`` (a schedule change).

Run history is not asked here: the telemetry service stores the run events
(``telemetry/run_events``); the scheduler's own event table is its claim store.
"""

from __future__ import annotations

import time

from nodefleet.contracts.scheduling import RunView, ScheduleChange, ScheduleChanged, ShowAnswer, ShowQuery
from nodefleet.fleet import TypedHandler, typed

from .changes import ScheduleChanges
from .nodes import NodeView
from .rulebook import Run, next_start, window


def _run_view(run: Run | None) -> RunView | None:
    return RunView(rule=run.rule, run_id=run.run_id, action=run.action, start=run.start, end=run.end) if run else None


def handlers(nodes: dict[str, NodeView], changes: ScheduleChanges) -> dict[str, TypedHandler]:
    """Fleet request actions -> typed handlers (the actions and models: nodefleet/contracts/requests.py)."""

    @typed
    async def show(query: ShowQuery) -> ShowAnswer:
        view = nodes.get(query.node)
        if view is None:
            return ShowAnswer(node=query.node)
        now = int(time.time())
        return ShowAnswer(
            node=view.name, schedule=view.schedule, rejected=view.rejected, online=view.online, mode=view.mode,
            open=_run_view(window(view.rules, view.tz, now)), next=_run_view(next_start(view.rules, view.tz, now)),
            sleep_until=view.sleep_until if view.asleep else None, overslept=view.overslept,
        )

    @typed
    async def set_(change: ScheduleChange) -> ScheduleChanged:
        return await changes.apply(change)

    return {"show": show, "set": set_}

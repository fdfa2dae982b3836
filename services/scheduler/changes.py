"""Schedule changes have one owner: ``scheduler/set`` applies a rule to a node's current schedule and publishes
the next version (retained).

Per node, one change at a time: a lock inside this instance, and across
instances PostgreSQL's advisory lock held while the new version is published
(:meth:`Store.change_schedule`), so versions go up one by one and the retained
schedule is always the newest.  Every instance receives each request; its
``change`` id is recorded with the result, so an instance that gets it second
answers with the first one's result instead of applying it again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from nodefleet.contracts.scheduling import BadSchedule, ScheduleChange, ScheduleChanged, validate_schedule

from .store import Store

PUBLISH_TIMEOUT = 10.0  # seconds for the broker to acknowledge the new retained schedule

Publish = Callable[[str, bytes], Awaitable[None]]
"""Publish (node, schedule JSON) retained at QoS 1; returns once the broker acknowledged it."""

Held = Callable[[str], dict[str, Any] | None]
"""The schedule this instance holds for a node (the last valid one it received)."""


def newest(*schedules: dict[str, Any] | None) -> dict[str, Any] | None:
    """The schedule with the highest version (None if there is none)."""
    return max((s for s in schedules if s is not None), key=lambda s: s["version"], default=None)


def applied(current: dict[str, Any] | None, change: ScheduleChange) -> dict[str, Any]:
    """The schedule after ``change``: the next version, checked as the node checks it (BadSchedule if refused)."""
    kept = [] if change.replace or current is None else [
        r for r in current.get("rules", []) if not (isinstance(r, dict) and r.get("id") == change.rule.get("id"))]
    version = current["version"] + 1 if current else 1
    new = {"v": 1, "version": version, "rules": [*kept, change.rule]}
    try:
        validate_schedule(new)
    except BadSchedule as exc:
        raise BadSchedule(f"the node would reject {change.node}'s schedule version {version}: {exc}") from None
    return new


class ScheduleChanges:
    def __init__(self, store: Store, publish: Publish, held: Held) -> None:
        self.store = store
        self._publish = publish
        self._held = held
        self._locks: dict[str, asyncio.Lock] = {}

    async def apply(self, change: ScheduleChange) -> ScheduleChanged:
        lock = self._locks.setdefault(change.node, asyncio.Lock())
        async with lock:
            # The stored schedule, or the one just received if its save has not landed yet (or failed).
            schedule = await self.store.change_schedule(
                change.node, change.change,
                lambda stored: applied(newest(stored, self._held(change.node)), change), self._send)
        return ScheduleChanged(node=change.node, schedule=schedule)

    async def _send(self, node: str, schedule: dict[str, Any]) -> None:
        async with asyncio.timeout(PUBLISH_TIMEOUT):
            await self._publish(node, json.dumps(schedule).encode())

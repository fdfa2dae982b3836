"""What this instance knows of each node from its messages: availability, info, the config version it applied.

Held in memory only (every instance sees every status and info); one lock
per node keeps a node's first online, config change and removal apart.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from nodefleet.contracts import Info


@dataclass
class NodeMemory:
    online: dict[str, bool] = field(default_factory=dict)
    asleep: set[str] = field(default_factory=set)  # status "sleeping": asleep by plan, not lost
    info: dict[str, Info] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)  # config version each node last reported
    rejected: dict[str, tuple[int, str]] = field(default_factory=dict)  # the last config version refused, and why
    settled: set[str] = field(default_factory=set)  # nodes seen provisioned: their reconnects skip the first-online UPDATE
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def lock(self, node: str) -> asyncio.Lock:
        return self._locks.setdefault(node, asyncio.Lock())

    def forget(self, node: str) -> None:
        """A removed node: nothing of it is kept."""
        self.info.pop(node, None)
        self.online.pop(node, None)
        self.asleep.discard(node)
        self.applied.pop(node, None)
        self.settled.discard(node)
        self.rejected.pop(node, None)
        self._locks.pop(node, None)

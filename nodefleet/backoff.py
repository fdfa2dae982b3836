"""Growing pauses between retries, shared by every reconnect loop."""

from __future__ import annotations

import asyncio
import random
import time


class Backoff:
    """Doubles the pause after each failure up to ``most``; jitter keeps many clients out of step.

    An attempt that lasted longer than ``reset_after`` seconds (a connection
    that was up for a while) starts again from ``first``.
    """

    def __init__(self, *, first: float = 0.2, most: float = 10.0, reset_after: float = 10.0, jitter: float = 0.2) -> None:
        self.first = first
        self.most = most
        self.reset_after = reset_after
        self.jitter = jitter
        self.delay = first
        self._started = time.monotonic()

    def attempt(self) -> None:
        """Mark the start of an attempt."""
        self._started = time.monotonic()

    def reset(self) -> None:
        self.delay = self.first

    @property
    def next_pause(self) -> float:
        """The pause the next ``wait`` takes, before jitter (for log lines)."""
        if time.monotonic() - self._started > self.reset_after:
            return self.first
        return self.delay

    async def wait(self) -> None:
        pause = self.next_pause
        await asyncio.sleep(pause * random.uniform(1 - self.jitter, 1 + self.jitter))
        self.delay = min(pause * 2, self.most)
        self._started = time.monotonic()

"""Rate limits per key: a token bucket for each (a node's name at telemetry ingest, a client's address at the
provisioner's HTTP edge).

A key that goes too fast (a firmware bug, someone with a node's login, a script flooding registrations) has its
excess refused: counted, reported once per key and window by the caller, and its flood costs the others nothing
but the bucket check. The caller says what time a message is at: telemetry ingest times telemetry by the
device's ``ts`` (services/telemetry/decode.py), so a backlog replayed after an outage is not cut.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_KEYS = 100_000
"""Buckets kept; past it they start afresh (full), so a stream of invented keys cannot grow memory."""


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float
    dropped: int = 0
    noted_at: float = float("-inf")


class RateLimits:
    """``allow(key, now)``: whether a message (or request) of ``key`` at ``now`` is within its limit."""

    def __init__(self, messages: int, window: float) -> None:
        self.capacity = float(messages)
        self.rate = messages / window
        self.window = window
        self.dropped = 0
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, node: str, now: float) -> bool:
        bucket = self._buckets.get(node)
        if bucket is None:
            if len(self._buckets) >= MAX_KEYS:
                self._buckets.clear()
            bucket = self._buckets[node] = _Bucket(self.capacity, now)
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = max(bucket.at, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        bucket.dropped += 1
        self.dropped += 1
        return False

    def first_in_window(self, node: str, now: float) -> bool:
        """Whether this drop is the node's first in the current window (the one that is reported)."""
        bucket = self._buckets[node]
        if now - bucket.noted_at >= self.window:
            bucket.noted_at = now
            return True
        return False

    def dropped_by(self, node: str) -> int:
        bucket = self._buckets.get(node)
        return bucket.dropped if bucket else 0

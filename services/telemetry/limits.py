"""Per-node rate limits of ingest: a token bucket for each node (seed 003: 100 messages in 60 s).

A node that publishes too fast (a firmware bug, or someone with its login) has its excess dropped: counted,
reported once per node and window, never stored, and its flood costs the other nodes nothing but the bucket
check. Telemetry is timed by the device's ``ts`` where it has one, so the backlog a persistent session replays
after an outage of the service (sent at the node's own pace, arriving at once) is not cut; a sender that lies
about its clock is bounded by the retention and clock-ahead checks only. Other kinds are timed on arrival. A
node's status is never limited: the broker sends it too (the last will).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_NODES = 100_000
"""Buckets kept; past it they start afresh (full), so a stream of invented names cannot grow memory."""


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float
    dropped: int = 0
    noted_at: float = float("-inf")


class NodeLimits:
    """``allow(node, now)``: whether a message of ``node`` received at ``now`` is within its limit."""

    def __init__(self, messages: int, window: float) -> None:
        self.capacity = float(messages)
        self.rate = messages / window
        self.window = window
        self.dropped = 0
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, node: str, now: float) -> bool:
        bucket = self._buckets.get(node)
        if bucket is None:
            if len(self._buckets) >= MAX_NODES:
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

"""Turn received MQTT messages into rows to store, or into rejections.

Node topics, plus the scheduler's run events on ``Topics.scheduler_events()``.

Pure functions over bytes and the clock: no I/O here, so every kind of bad
input is testable in memory.  A rejection names a stable ``code`` that is
counted and reported on the errors topic.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from pydantic import ValidationError

from nodefleet.contracts import (
    NODE_TOPICS,
    OFFLINE,
    ONLINE,
    SLEEPING,
    Ack,
    Info,
    Log,
    NodeTopic,
    Payload,
    State,
    Telemetry,
    TopicError,
    Topics,
)
from nodefleet.contracts.payloads import MAX_PAYLOAD_BYTES
from nodefleet.contracts.scheduling import RunEvent
from nodefleet.ratelimit import RateLimits
from nodefleet.wire import Inbound

DAY = 86_400

_STORED: dict[NodeTopic, tuple[type[Payload], str]] = {
    kind: (NODE_TOPICS[kind].payload, into)  # type: ignore[misc]
    for kind, into in ((NodeTopic.STATE, "states"), (NodeTopic.INFO, "infos"), (NodeTopic.LOG, "logs"),
                       (NodeTopic.ACK, "acks"))
}
"""Node topics stored as their model (from the node topic table), and the Decoded list each goes to; telemetry
and status are decoded on their own (clock checks, plain text)."""
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, slots=True)
class Rejected:
    code: str
    detail: str
    topic: str
    node: str | None = None
    reported: bool = True
    """False: counted only (a rate-limited node's excess after the first drop of its window)."""


@dataclass(slots=True)
class TelemetryRecord:
    node: str
    ts: float | None
    received: float
    seq: int
    readings: str


@dataclass(slots=True)
class Decoded:
    """Everything one batch holds, grouped by what it becomes in the database."""

    telemetry: list[TelemetryRecord] = field(default_factory=list)
    states: list[tuple[str, State, float]] = field(default_factory=list)
    infos: list[tuple[str, Info, float]] = field(default_factory=list)
    logs: list[tuple[str, Log, float]] = field(default_factory=list)
    acks: list[tuple[str, Ack, float]] = field(default_factory=list)
    statuses: list[tuple[str, bool, float, bool]] = field(default_factory=list)
    """(node, online, received, sleeping): ``sleeping`` is a planned sleep, not a loss."""
    removals: list[tuple[str, float]] = field(default_factory=list)
    """Nodes whose retained status was cleared (removed), with the time it was."""
    run_events: list[tuple[str, RunEvent, float]] = field(default_factory=list)
    seen: dict[str, tuple[float, float]] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)

    def see(self, node: str, received: float) -> None:
        first, last = self.seen.get(node, (received, received))
        self.seen[node] = (min(first, received), max(last, received))


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "payload"
    return f"{where}: {error['msg']}"


class Decoder:
    """Decodes the node topics under ``topics.root``; caches parsed topics."""

    def __init__(self, topics: Topics, *, retention_days: int, max_clock_ahead: float,
                 limits: RateLimits | None = None) -> None:
        self.topics = topics
        self.limits = limits
        self.retention = retention_days * DAY
        self.max_clock_ahead = max_clock_ahead
        self.events_topic = topics.scheduler_events()
        self._parsed: dict[str, tuple[str, NodeTopic]] = {}

    def _parse_topic(self, topic: str) -> tuple[str, NodeTopic]:
        hit = self._parsed.get(topic)
        if hit is not None:
            return hit
        parsed = self.topics.parse(topic)
        if parsed.kind is None:
            raise TopicError(f"topic {topic!r} is a command, not something a node reports")
        if len(self._parsed) > 100_000:
            self._parsed.clear()
        self._parsed[topic] = hit = (parsed.node, parsed.kind)
        return hit

    def decode(self, batch: list[Inbound], *, now: float | None = None) -> Decoded:
        now = time.time() if now is None else now
        out = Decoded()
        for message in batch:
            rejection = self._one(message, out, now)
            if rejection is not None:
                out.rejected.append(rejection)
        return out

    def _one(self, message: Inbound, out: Decoded, now: float) -> Rejected | None:
        topic = message.topic
        if topic == self.events_topic:
            return self._run_event(message, out)
        try:
            node, kind = self._parse_topic(topic)
        except TopicError as exc:
            return Rejected("bad_topic", str(exc), topic)
        received = message.received
        if kind not in (NodeTopic.STATUS, NodeTopic.TELEMETRY) and (over := self._over(node, received, topic)):
            return over
        payload = message.payload
        if len(payload) > MAX_PAYLOAD_BYTES:
            return Rejected("too_large", f"{len(payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}", topic, node)
        if not payload and kind in (NodeTopic.STATUS, NodeTopic.STATE, NodeTopic.INFO):
            # A retained message cleared: a removal (the provisioner empties status, state and info) is not bad
            # input and not the node being heard; the emptied status marks the node removed.
            if kind is NodeTopic.STATUS:
                out.removals.append((node, received))
            return None
        try:
            if kind is NodeTopic.TELEMETRY:
                reading = Telemetry.model_validate_json(payload)
                if reading.ts is not None:
                    if reading.ts < now - self.retention:
                        return Rejected("too_old", f"device time {reading.ts:.0f} is older than the retention", topic, node)
                    if reading.ts > now + self.max_clock_ahead:
                        return Rejected("clock_ahead", f"device time {reading.ts:.0f} is in the future", topic, node)
                # On the device's clock where it gives one: the backlog a persistent session replays after an
                # outage of this service arrives at once but was sent at the node's own pace.
                if over := self._over(node, received if reading.ts is None else reading.ts, topic):
                    return over
                out.telemetry.append(
                    TelemetryRecord(node, reading.ts, received, reading.seq, _JSON.encode(reading.readings))
                )
            elif kind is NodeTopic.STATUS:
                text = payload.strip()
                if text not in (ONLINE.encode(), OFFLINE.encode(), SLEEPING.encode()):
                    return Rejected("bad_payload", f"status must be {ONLINE!r}, {OFFLINE!r} or {SLEEPING!r}", topic,
                                    node)
                out.statuses.append((node, text == ONLINE.encode(), received, text == SLEEPING.encode()))
            else:
                stored = _STORED.get(kind)
                if stored is None:
                    return Rejected("bad_topic", f"the telemetry service does not store {kind.value!r}", topic, node)
                model, into = stored
                getattr(out, into).append((node, model.model_validate_json(payload), received))
        except ValidationError as exc:
            code = "bad_json" if exc.errors()[0]["type"] == "json_invalid" else "bad_payload"
            return Rejected(code, _first_error(exc), topic, node)
        except ValueError as exc:  # readings that JSON cannot carry (NaN, infinity)
            return Rejected("bad_payload", str(exc), topic, node)
        out.see(node, received)
        return None

    def _over(self, node: str, at: float, topic: str) -> Rejected | None:
        """The rejection of a message over its node's limit, or None (also without limits)."""
        limits = self.limits
        if limits is None or limits.allow(node, at):
            return None
        return Rejected("rate_limited", f"over {limits.capacity:.0f} messages in {limits.window:g} s: dropped "
                        f"({limits.dropped_by(node)} so far; the limit is the telemetry service's node_limit)",
                        topic, node, reported=limits.first_in_window(node, at))

    def _run_event(self, message: Inbound, out: Decoded) -> Rejected | None:
        """A scheduler run event; it says nothing about whether its node was heard, so ``seen`` stays as it is."""
        payload = message.payload
        if len(payload) > MAX_PAYLOAD_BYTES:
            return Rejected("too_large", f"{len(payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}", message.topic)
        try:
            event = RunEvent.model_validate_json(payload)
        except ValidationError as exc:
            code = "bad_json" if exc.errors()[0]["type"] == "json_invalid" else "bad_payload"
            return Rejected(code, _first_error(exc), message.topic)
        out.run_events.append((event.node, event, message.received))
        return None

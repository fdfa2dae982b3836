"""Requests the CLI and apps send to services, and the data that comes back.

A request travels as :class:`~nodefleet.contracts.envelope.FleetRequest` on
``Topics.request(service, action)``; its ``data`` validates against the
request model below and the reply's ``data`` against the answer model.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from .payloads import Epoch, Identifier, LogLevel, Mode, NodeName, Seq

TELEMETRY_SERVICE = "telemetry"


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DevicesQuery(Query):
    """``telemetry/devices``: every known node."""

    action: Annotated[str, Field(exclude=True)] = "devices"


class DeviceRow(Query):
    node: NodeName
    online: bool | None = None
    sleeping: bool = False
    """Status ``sleeping``: asleep by plan (``online`` is false), not lost."""
    sleep_until: Epoch | None = None
    """While ``sleeping``: when the node means to wake (its last state's ``sleep_until``), if it said."""
    availability_changed: Epoch | None = None
    last_seen: Epoch | None = None
    relay: str | None = None
    mode: Mode | None = None
    state_seq: Seq | None = None
    fw: str | None = None
    chip_id: str | None = None


class TelemetryQuery(Query):
    """``telemetry/telemetry``: a node's rows between two times, oldest first."""

    action: Annotated[str, Field(exclude=True)] = "telemetry"
    node: NodeName
    since: Epoch
    until: Epoch | None = None
    limit: Annotated[int, Field(ge=1, le=100_000)] = 10_000


class TelemetryRow(Query):
    node: NodeName
    time: Epoch
    received: Epoch
    seq: Seq
    readings: dict[str, Any]


class LogsQuery(Query):
    """``telemetry/logs``: a node's device logs, newest first."""

    action: Annotated[str, Field(exclude=True)] = "logs"
    node: NodeName
    limit: Annotated[int, Field(ge=1, le=10_000)] = 100


class LogRow(Query):
    node: NodeName
    received: Epoch
    time: Epoch | None
    seq: Seq
    level: LogLevel
    code: Identifier
    msg: str
    reset_cause: str | None = None
    trace: str | None = None


class RunEventsQuery(Query):
    """``telemetry/run_events``: a node's scheduler run events, newest first.

    Answered with :class:`~nodefleet.contracts.scheduling.RunEventRow` rows (that
    module holds the run event models).
    """

    action: Annotated[str, Field(exclude=True)] = "run_events"
    node: NodeName
    limit: Annotated[int, Field(ge=1, le=10_000)] = 100

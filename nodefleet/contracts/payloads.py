"""Pydantic models for every payload of the topic contract.

Every JSON payload carries ``v`` (the payload format version).  Models that
arrive from outside (nodes, operators, apps) forbid unknown fields, so a typo
or a payload from a newer, incompatible format is rejected instead of being
half-understood.  Times are Unix epoch seconds (UTC); durations are seconds.

``status`` is not JSON: it is the plain ``online``/``offline`` string that
openHAB's availability binding expects (``sleeping`` while a node sleeps by
plan: its retained state then carries ``sleep_until``).

Here: the shared field types, what nodes report, and the retained config and
schedule; the commands to nodes are ``commands.py``, the fleet request/reply
envelope and error events ``envelope.py``.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .topics import NODE_NAME_PATTERN

__all__ = [
    "Payload",
    "JsonData",
    "Info",
    "State",
    "Telemetry",
    "Log",
    "Ack",
    "SleepWindow",
    "ClockSource",
    "Outputs",
    "Inputs",
    "Pins",
    "Offset",
    "Config",
    "Rule",
    "Schedule",
    "MAX_PAYLOAD_BYTES",
    "PAYLOAD_VERSION",
    "WEEKDAYS",
]

PAYLOAD_VERSION = 1
MAX_PAYLOAD_BYTES = 16 * 1024
"""Largest node payload any service accepts; larger ones are rejected unread."""
VERSION_MAX = 2**31 - 1
"""Largest config or schedule version: the services keep it in a PostgreSQL integer, the firmware checks it too."""

ShortText = Annotated[str, StringConstraints(max_length=64)]
Text = Annotated[str, StringConstraints(max_length=1024)]
LongText = Annotated[str, StringConstraints(max_length=8192)]
Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
NodeName = Annotated[str, StringConstraints(pattern=f"^{NODE_NAME_PATTERN}$")]
Seq = Annotated[int, Field(ge=0, lt=2**63)]
Epoch = Annotated[float, Field(ge=0, lt=2**33)]
Seconds = Annotated[int, Field(ge=0, le=7 * 86400)]
ReadingName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
HHMM_PATTERN = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")
HHMM = Annotated[str, WithJsonSchema({"type": "string", "pattern": f"^{HHMM_PATTERN.pattern}$"})]
"""A time of day, 00:00-23:59; checked by the models that use it so the message is the firmware's own words."""
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _finite_json(value: Any) -> Any:
    """JSON has no Infinity or NaN (Python's json reads them, a dump would turn them into null)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("finite_number", "JSON has no Infinity or NaN: give a finite number")
    if isinstance(value, dict):
        for item in value.values():
            _finite_json(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _finite_json(item)
    return value


JsonData = Annotated[Any, AfterValidator(_finite_json)]
"""Any JSON value (an answer's ``data``), checked to be one JSON can carry."""


class Part(BaseModel):
    """Base of nested parts of a payload: strict and immutable; floats finite (JSON has no Infinity or NaN)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


class Payload(Part):
    """Base of every JSON payload: a Part that carries its format version."""

    v: Literal[1] = PAYLOAD_VERSION


# -- node -> everyone ------------------------------------------------------


ClockSource = Literal["ntp", "backend", "rtc"]
"""``ntp``; ``backend``: the scheduler's ``set/time``; ``rtc``: kept by the chip's clock (across a deep sleep)."""


class Info(Payload):
    """``home/N/info`` (retained): what the node is."""

    chip_id: Identifier
    fw: ShortText
    caps: list[ShortText] = Field(default_factory=list, max_length=32)
    boot_reason: ShortText = "unknown"
    boot_count: Annotated[int, Field(ge=0)] = 0
    ip: ShortText | None = None
    mac: ShortText | None = None
    clock: ClockSource | None = None
    """Where the node's time came from (null: it has none)."""
    wake: ShortText | None = None
    """After a deep sleep: why the node woke (``window``, ``rule``, ``command``: the timer it set; else the chip's
    wake reason, such as ``button``)."""


Mode = Literal["auto", "manual", "logic_disabled", "stopped"]


class State(Payload):
    """``home/N/state`` (retained): relay, mode and the rule in force."""

    seq: Seq
    relay: Literal["ON", "OFF"]
    mode: Mode
    rule: Identifier | None = None
    run_id: Identifier | None = None
    until: Epoch | None = None
    time_valid: bool = True
    ts: Epoch | None = None
    config: Annotated[int, Field(ge=1)] | None = None
    """Version of the retained config the node applied; absent until it has one (a rejected one is logged)."""
    schedule: Annotated[int, Field(ge=1)] | None = None
    """Version of the retained schedule the node applied and runs; null while it has none (a rejected one is
    logged as ``bad_schedule`` and the previous version stays in force)."""
    sleep_until: Epoch | None = None
    """Set on the last state before a planned sleep (status ``sleeping``): when the node means to wake."""


class Telemetry(Payload):
    """``home/N/telemetry``: periodic readings.

    ``seq`` never repeats for a node (it survives reboots); with ``ts`` (the
    device's clock, absent while the node has no valid time) it makes each row
    unique, so a redelivered message is stored once.
    """

    seq: Seq
    ts: Epoch | None = None
    uptime: Annotated[int, Field(ge=0)] = 0
    readings: dict[ReadingName, float | int | bool | None] = Field(default_factory=dict, max_length=32)


LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class Log(Payload):
    """``home/N/log``: one device error or crash report, kept on flash until sent."""

    seq: Seq
    ts: Epoch | None = None
    level: LogLevel = "error"
    code: Identifier
    msg: Text
    reset_cause: ShortText | None = None
    trace: LongText | None = None


class Ack(Payload):
    """``home/N/ack``: the answer to a command that carried an ``id``.

    ``expired``: the command arrived after its expiry (see :class:`CommandPayload`) and was not
    executed; ``error`` says when it expired and the node's time.
    """

    id: Identifier
    status: Literal["ok", "error", "expired"]
    error: Text | None = None
    state_seq: Seq | None = None

    @model_validator(mode="after")
    def _error_needs_reason(self) -> Ack:
        if self.status in ("error", "expired") and not self.error:
            raise ValueError(f"an {self.status} ack needs a reason")
        return self


# -- provisioner / operator -> node (retained) -----------------------------


class Outputs(Part):
    relay: Annotated[int, Field(ge=0, le=48)] = 26
    led: Annotated[int, Field(ge=0, le=48)] | None = 2
    relay_active_low: bool = False


class Inputs(Part):
    button: Annotated[int, Field(ge=0, le=48)] | None = 22
    dht: Annotated[int, Field(ge=0, le=48)] | None = None
    dht_type: Literal["dht11", "dht22"] = "dht11"


class Pins(Part):
    outputs: Outputs = Field(default_factory=Outputs)
    inputs: Inputs = Field(default_factory=Inputs)


class Offset(Part):
    """From ``from_`` (UTC epoch) on, local time is UTC plus ``offset`` seconds."""

    from_: Epoch = Field(alias="from")
    offset: Annotated[int, Field(ge=-14 * 3600, le=14 * 3600)]


class SleepWindow(Part):
    """The config's planned sleep: on the listed days from ``at`` (node-local) for ``duration`` seconds.

    The node sleeps inside it only with the relay off, wakes ``early`` seconds before a rule that falls due
    inside, and at its end.
    """

    at: HHMM
    duration: Annotated[int, Field(ge=1, le=86400)]
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1, max_length=7)
    early: Annotated[int, Field(ge=0, le=600)] = 30

    @field_validator("at", mode="before")
    @classmethod
    def _hhmm(cls, value: Any) -> Any:
        if not isinstance(value, str) or HHMM_PATTERN.fullmatch(value) is None:
            raise PydanticCustomError("hhmm", "sleep.at must be HH:MM", {})
        return value


class Config(Payload):
    """``home/N/config`` (retained): the versioned device configuration.

    ``tz`` lists UTC-offset changes computed by the backend from the home's
    IANA zone (MicroPython has no zoneinfo), sorted by ``from``.
    """

    version: Annotated[int, Field(ge=1, le=VERSION_MAX)]
    pins: Pins = Field(default_factory=Pins)
    telemetry_period: Annotated[int, Field(ge=1, le=86400)] = 60
    power_on: Literal["off", "last", "schedule"] = "off"
    tz: list[Offset] = Field(default_factory=list, max_length=64)
    tz_name: ShortText | None = None
    web_password: ShortText | None = None
    ap_after: Annotated[int, Field(ge=0, le=86400)] = 300
    sleep: SleepWindow | None = None

    @field_validator("tz")
    @classmethod
    def _sorted(cls, tz: list[Offset]) -> list[Offset]:
        if any(a.from_ >= b.from_ for a, b in zip(tz, tz[1:])):
            raise ValueError("tz offsets must be sorted by 'from', without repeats")
        return tz


class Rule(Part):
    """One NodeLogic rule: every listed day at ``at`` (node-local), ``action`` for ``duration``.

    An interval rule adds ``every`` (seconds) and ``end`` (HH:MM): runs start at
    ``at``, ``at + every``, ... while the start is before ``end`` ("every 4 h for
    20 min between 06:00 and 22:00").  ``end`` at or before ``at`` crosses midnight.
    """

    id: Identifier
    at: HHMM
    duration: Annotated[int, Field(ge=1, le=86400)]
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1, max_length=7)
    action: Literal["on", "off"] = "on"
    enabled: bool = True
    every: Annotated[int, Field(ge=300, le=86400)] | None = None
    end: HHMM | None = None

    @field_validator("at", "end", mode="before")
    @classmethod
    def _hhmm(cls, value: Any, info: ValidationInfo) -> Any:
        # Worded like the node's and the scheduler's check (firmware/rules.py), not as a regular expression.
        if value is None and info.field_name == "end":
            return value
        if not isinstance(value, str) or HHMM_PATTERN.fullmatch(value) is None:
            rule = info.data.get("id", "?")
            if info.field_name == "end":
                raise PydanticCustomError("hhmm", "rule {rule}: an interval rule needs end as HH:MM", {"rule": rule})
            raise PydanticCustomError("hhmm", "rule {rule}: at must be HH:MM", {"rule": rule})
        return value

    @field_validator("days")
    @classmethod
    def _unique_days(cls, days: list[Weekday]) -> list[Weekday]:
        if len(set(days)) != len(days):
            raise ValueError("days repeat")
        return days

    @model_validator(mode="after")
    def _interval_complete(self) -> Rule:
        if (self.every is None) != (self.end is None):
            raise ValueError("an interval rule needs both every and end")
        if self.every is not None and self.duration > self.every:
            raise ValueError("duration must not be longer than every")
        return self


class Schedule(Payload):
    """``home/N/schedule`` (retained): the node's versioned NodeLogic rules."""

    version: Annotated[int, Field(ge=1, le=VERSION_MAX)]
    rules: list[Rule] = Field(default_factory=list, max_length=32)

    @field_validator("rules")
    @classmethod
    def _unique_ids(cls, rules: list[Rule]) -> list[Rule]:
        ids = [r.id for r in rules]
        if len(set(ids)) != len(ids):
            raise ValueError("rule ids repeat")
        return rules

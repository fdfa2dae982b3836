"""Commands to a node, ``<prefix>/set/<command>`` (never retained), and the node's clock request.

``set/switch`` also accepts plain ``ON``/``OFF``/``TOGGLE`` (see :func:`parse_switch`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .payloads import Epoch, Identifier, Payload, Seconds

__all__ = ["COMMAND_TTL", "ClockRequest", "CommandPayload", "LogicCommand", "RestartCommand", "SleepCommand",
           "StopCommand", "SwitchCommand", "TimeCommand", "parse_switch"]

COMMAND_TTL = 60
"""Seconds a command with ``sent`` but no ``expires`` stays valid."""


class CommandPayload(Payload):
    """What every command may carry: ``id`` (answered with an ack) and its expiry.

    The broker keeps QoS 1 commands for a node that is briefly offline (its
    session is persistent), so a command may arrive late. ``sent`` is the
    sender's clock (epoch seconds); ``expires`` (epoch seconds) is when it
    stops being valid, else ``sent + COMMAND_TTL``. A node with valid time
    answers a command that arrives later than that with an ``expired`` ack
    and does not execute it. A command without either, replayed by the broker
    after an outage longer than ``COMMAND_TTL`` (or across a reboot), is
    expired too: its age cannot be told.
    """

    id: Identifier | None = None
    sent: Epoch | None = None
    expires: Epoch | None = None



class SwitchCommand(CommandPayload):
    """``home/N/set/switch``: ``{"state": "ON", "for": 600, "id": "..."}``.

    A backup run from the scheduler carries ``run_id`` and ``until`` (a target
    state with an end time, never a toggle) so a node that already executed
    the run treats it as a no-op.
    """

    state: Literal["ON", "OFF", "TOGGLE"]
    for_: Seconds | None = Field(default=None, alias="for")
    until: Epoch | None = None
    run_id: Identifier | None = None

    @model_validator(mode="after")
    def _run_is_a_target(self) -> SwitchCommand:
        if self.run_id is not None and self.state == "TOGGLE":
            raise ValueError("a run must name a target state, never TOGGLE")
        return self


class LogicCommand(CommandPayload):
    """``home/N/set/logic``: enable or disable NodeLogic (disabled = plain switch)."""

    enabled: bool


class StopCommand(CommandPayload):
    """``home/N/set/stop``: failsafe. Relay off, logic paused until ``resume``."""

    resume: bool = False


class RestartCommand(CommandPayload):
    """``home/N/set/restart``."""


class ClockRequest(Payload):
    """``home/N/clock``: the node has no valid time and asks the scheduler for ``set/time``."""


class TimeCommand(CommandPayload):
    """``home/N/set/time``: backend time, the fallback when NTP is unreachable."""

    ts: Epoch


class SleepCommand(CommandPayload):
    """``home/N/set/sleep``: deep sleep for ``for`` seconds, only while the relay is off; a rule due sooner wakes it."""

    for_: Annotated[int, Field(ge=1, le=7 * 86400)] = Field(alias="for")


def parse_switch(raw: bytes | str) -> SwitchCommand:
    """Accept plain ``ON``/``OFF``/``TOGGLE`` (openHAB, mosquitto_pub) or the JSON form."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    plain = text.strip().upper()
    if plain in ("ON", "OFF", "TOGGLE"):
        return SwitchCommand(state=plain)
    return SwitchCommand.model_validate_json(text)

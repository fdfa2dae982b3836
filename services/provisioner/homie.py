"""Homie 4 property values, kept in step with the nodes both ways.

Homie fixes where a property's value lives (``homie/<node>/relay/power``,
``homie/<node>/climate/<reading>``) and where a controller sets it
(``homie/<node>/relay/power/set``).  The provisioner published each node's
Homie description, so it also keeps those values: a node's state and
telemetry are mirrored there (retained, and only when a value changed), and a
Homie ``set`` becomes the node's switch command: a target state (``ON`` or
``OFF``), never a toggle, so a repeated set is harmless.

Only nodes this provisioner has seen provisioned are mirrored, with the
properties their description declared; anything else on these topics is
reported as an error event and dropped.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable

from pydantic import ValidationError

from nodefleet.contracts import Command, State, SwitchCommand, Telemetry, Topics, TopicError
from nodefleet.fleet import ErrorReporter

from .discovery import CLIMATE_NODE, POWER, RELAY_NODE, SENSORS, SET

Publish = Callable[[str, str | bytes, bool], Awaitable[None]]
Capabilities = Callable[[str], Iterable[str] | None]
"""node -> the capabilities its Homie description declared, or None when it is not ours."""

_BOOLEAN = {b"true": "ON", b"false": "OFF"}


def set_filter() -> str:
    """Every node's settable relay property: what a Homie controller publishes to."""
    return Topics.homie_every_device(RELAY_NODE, POWER, SET)


class HomieBridge:
    def __init__(self, *, topics: Topics, publish: Publish, errors: ErrorReporter, capabilities: Capabilities) -> None:
        self.topics = topics
        self.publish = publish
        self.errors = errors
        self.capabilities = capabilities
        self._values: dict[str, str] = {}  # Homie value topic -> last payload published
        self.forwarded = 0

    async def _mirror(self, topic: str, value: str) -> None:
        if self._values.get(topic) == value:
            return  # most states and readings repeat: no retained publish for them
        await self.publish(topic, value, True)
        self._values[topic] = value

    async def on_state(self, node: str, state: State) -> None:
        caps = self.capabilities(node)
        if caps is not None and "switch" in caps:
            await self._mirror(Topics.homie(node, RELAY_NODE, POWER), "true" if state.relay == "ON" else "false")

    async def on_telemetry(self, node: str, payload: bytes) -> None:
        caps = self.capabilities(node)
        if caps is None or not payload:
            return
        wanted = [reading for reading in SENSORS if reading in caps]
        if not wanted:
            return
        try:
            readings = Telemetry.model_validate_json(payload).readings
        except ValidationError:
            return  # the telemetry service reports and counts bad telemetry; one report is enough
        for reading in wanted:
            value = readings.get(reading)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                await self._mirror(Topics.homie(node, CLIMATE_NODE, reading), f"{value:g}")

    async def on_set(self, topic: str, payload: bytes) -> None:
        """A controller set ``relay/power``: send the node its switch command."""
        try:
            node = Topics.homie_device_of(topic)
        except TopicError as exc:
            self.errors.report("bad_homie_set", str(exc), topic=topic)
            return
        caps = self.capabilities(node)
        if caps is None or "switch" not in caps:
            self.errors.report("bad_homie_set", f"{node} is not a provisioned switch: nothing to set", topic=topic,
                               node=node)
            return
        state = _BOOLEAN.get(payload.strip().lower())
        if state is None:
            self.errors.report("bad_homie_set", f"Homie boolean expected (true or false), got {payload[:40]!r}",
                               topic=topic, node=node)
            return
        command = SwitchCommand(state=state).model_dump_json(by_alias=True, exclude_none=True)
        await self.publish(self.topics.set(node, Command.SWITCH), command, False)
        self.forwarded += 1

"""How the provisioner's parts publish: one callable over the service's MQTT session."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

Publish = Callable[[str, str | bytes, bool], Awaitable[None]]
"""(topic, payload, retain) -> published at QoS 1."""

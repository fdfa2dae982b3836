"""The fleet request/reply envelope (``<fleet>/<service>/request/<action>``, answered on ``reply_to``) and the
error events on ``<fleet>/errors``."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, field_validator

from .payloads import Epoch, Identifier, JsonData, NodeName, Payload, ShortText, Text

__all__ = ["ErrorEvent", "FleetReply", "FleetRequest"]

_REPLY_TOPIC = re.compile(r"^[A-Za-z0-9_/-]{1,200}$")


class FleetRequest(Payload):
    """A request on ``fleet/<service>/request/<action>``; answered on ``reply_to``."""

    transaction: Identifier
    reply_to: str
    data: dict[str, JsonData] = Field(default_factory=dict)

    @field_validator("reply_to")
    @classmethod
    def _plain_topic(cls, reply_to: str) -> str:
        if not _REPLY_TOPIC.fullmatch(reply_to):
            raise ValueError("reply_to must be a plain topic without wildcards")
        return reply_to


class FleetReply(Payload):
    """The answer to a FleetRequest: ``{status, data, error, transaction}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transaction: Identifier
    status: Literal["ok", "error"]
    data: JsonData = None
    error: Text | None = None


class ErrorEvent(Payload):
    """``fleet/errors``: something was rejected or failed.

    Services rate-limit these per ``code``; when a window in which some were
    left out closes, one summary event of that code carries their count in
    ``suppressed`` (0 on every other event) and quotes the last one.
    """

    ts: Epoch
    service: ShortText
    code: Identifier
    detail: Text
    topic: Annotated[str, StringConstraints(max_length=256)] | None = None
    node: NodeName | None = None
    suppressed: Annotated[int, Field(ge=0)] = 0

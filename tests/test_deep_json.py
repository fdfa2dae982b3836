"""Deeply nested JSON at the services' model entry points is a ValidationError (a rejection the services catch),
never a RecursionError out of a subscriber: pydantic's parser has its own depth limit, json.loads has none."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from nodefleet.contracts import COMMAND_PAYLOADS, NODE_PAYLOADS, FleetReply, FleetRequest
from nodefleet.contracts.ota import Progress, Want
from nodefleet.contracts.scheduling import RunEvent

MODELS: list[type[BaseModel]] = [*(m for m in NODE_PAYLOADS.values() if isinstance(m, type)),
                                 *COMMAND_PAYLOADS.values(), FleetReply, FleetRequest, Progress, Want, RunEvent]
DEEP = {"arrays": b"[" * 5000, "objects": b'{"a": ' * 5000 + b"1" + b"}" * 5000,
        "in a field": b'{"v": 1, "readings": ' + b"[" * 5000 + b"]" * 5000 + b"}"}


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("payload", DEEP.values(), ids=DEEP.keys())
def test_deep_json_is_a_validation_error(model: type[BaseModel], payload: bytes):
    with pytest.raises(ValidationError):
        model.model_validate_json(payload)

"""Property-based checks over every payload model, starting from the fixture each model has.

- Whatever a model accepts, it gives back unchanged: dump, validate again, same model.
- A fixture with one field dropped, replaced by a value of another JSON shape, or joined by an unknown field
  is refused with a ValidationError that names that field; nothing else escapes.
- Arbitrary bytes (invalid UTF-8, deep nesting, huge numbers, truncated JSON) fed to the decoding entry
  point raise only ValidationError.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from test_contracts import FIXTURES, fixture_model

from nodefleet import contracts as c

CASES = [(path.stem, fixture_model(path.stem)) for path in sorted(FIXTURES.glob("*.json"))]
# The suite's runs are derandomized, so a red CI is a change of ours, not a new draw. To explore further:
# HYPOTHESIS_PROFILE=explore python3 -m pytest tests/test_payload_properties.py (random draws, 20x the examples).
settings.register_profile("suite", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=1200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    max_examples=settings.default.max_examples if settings.default.max_examples > 100 else 60)

json_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def wire_names(model: type[BaseModel]) -> dict[str, str]:
    """Wire name -> attribute name (``for`` is ``for_`` in Python)."""
    return {(info.alias or attr): attr for attr, info in model.model_fields.items()}


def refused_naming(model: type[BaseModel], payload: Any, field: str) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(payload)
    places = {str(part) for error in caught.value.errors() for part in error["loc"]}
    assert field in places or field in str(caught.value), f"{model.__name__} refused {payload!r} without naming {field}"
    return caught.value


def other_shape(value: Any) -> Any:
    """A JSON value no field that accepted ``value`` accepts: containers become scalars and back."""
    if isinstance(value, dict | list):
        return 12345.5
    return {"not": ["a", value]}


@pytest.mark.parametrize(("name", "model"), CASES, ids=[name for name, _ in CASES])
@PROPERTY
@given(data=st.data())
def test_accepted_payloads_round_trip(name: str, model: type[BaseModel], data: st.DataObject) -> None:
    payload = fixture(name)
    # Perturb one field with any JSON value: whatever the model still accepts must survive a dump.
    key = data.draw(st.sampled_from(sorted(payload)), label="field")
    payload[key] = data.draw(json_values, label="value")
    try:
        first = model.model_validate(payload)
    except ValidationError:
        return
    again = model.model_validate_json(first.model_dump_json(by_alias=True))
    assert again == first


@pytest.mark.parametrize(("name", "model"), CASES, ids=[name for name, _ in CASES])
def test_every_mutated_fixture_is_refused_naming_the_field(name: str, model: type[BaseModel]) -> None:
    payload = fixture(name)
    names = wire_names(model)
    required = [wire for wire, attr in names.items() if model.model_fields[attr].is_required()]
    for wire in required:
        if wire in payload:
            refused_naming(model, {k: v for k, v in payload.items() if k != wire}, wire)
    for wire, value in payload.items():
        if wire in OPEN_FIELDS.get(name, ()):
            continue
        refused_naming(model, {**payload, wire: other_shape(value)}, wire)
    refused_naming(model, {**payload, "surprise_field": 1}, "surprise_field")


# Fields whose type is any JSON value by design: a mutation of shape is still valid for them.
OPEN_FIELDS: dict[str, tuple[str, ...]] = {
    "fleet_request": ("data",),
    "fleet_reply": ("data",),
}


@pytest.mark.parametrize(("name", "model"), CASES, ids=[name for name, _ in CASES])
@PROPERTY
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode)
       | json_values.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_bytes_raise_only_validation_errors(name: str, model: type[BaseModel], raw: bytes) -> None:
    try:
        model.model_validate_json(raw)
    except ValidationError:
        pass


@pytest.mark.parametrize("depth", [50, 2000])
def test_deep_nesting_and_huge_numbers_are_refused_cleanly(depth: int) -> None:
    deep = b"[" * depth + b"]" * depth
    with pytest.raises(ValidationError):
        c.Telemetry.model_validate_json(b'{"v": 1, "seq": 1, "readings": {"t": ' + deep + b"}}")
    with pytest.raises(ValidationError):
        c.Telemetry.model_validate_json(b'{"v": 1, "seq": 1' + b"0" * 5000 + b"}")

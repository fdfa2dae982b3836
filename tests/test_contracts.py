"""The topic contract and payload models, and the JSON fixtures both sides share."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from nodefleet import contracts as c

FIXTURES = Path(c.__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]


def fixture_model(name: str) -> type[c.Payload]:
    if name.startswith("set_"):
        return c.COMMAND_PAYLOADS[name.removeprefix("set_").split("_")[0]]
    special = {"fleet_request": c.FleetRequest, "fleet_reply": c.FleetReply, "error_event": c.ErrorEvent}
    if name in special:
        return special[name]
    return c.NODE_PAYLOADS[name.split("_")[0]]


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_every_fixture_validates_and_round_trips(path: Path) -> None:
    raw = json.loads(path.read_text())
    model = fixture_model(path.stem).model_validate(raw)
    again = json.loads(model.model_dump_json(by_alias=True, exclude_none=True))
    assert {k: v for k, v in raw.items() if v is not None} == again


def test_there_is_a_fixture_for_every_payload_kind() -> None:
    names = {p.stem.split("_")[0] if not p.stem.startswith("set_") else p.stem.split("_")[1] for p in FIXTURES.glob("*.json")}
    assert set(c.NODE_PAYLOADS) <= names
    assert set(c.COMMAND_PAYLOADS) <= names
    assert {"fleet", "error"} <= names


@pytest.mark.parametrize(
    ("model", "payload", "why"),
    [
        (c.Telemetry, {"seq": 1, "readings": {}, "extra": 1}, "unknown field"),
        (c.Telemetry, {"seq": -1}, "negative seq"),
        (c.Telemetry, {"seq": "x"}, "wrong type"),
        (c.Telemetry, {"seq": 1, "readings": {"Bad Name": 1}}, "reading name"),
        (c.Telemetry, {"v": 2, "seq": 1}, "newer format"),
        (c.State, {"seq": 1, "relay": "on", "mode": "auto"}, "relay must be ON/OFF"),
        (c.Ack, {"id": "a", "status": "error"}, "error without reason"),
        (c.SwitchCommand, {"state": "TOGGLE", "run_id": "r1"}, "run as toggle"),
        (c.Schedule, {"version": 1, "rules": [{"id": "a", "at": "24:00", "duration": 1}]}, "bad time"),
        (c.Schedule, {"version": 1, "rules": [{"id": "a", "at": "06:00", "duration": 1}] * 2}, "repeated ids"),
        (c.Config, {"version": 1, "tz": [{"from": 2, "offset": 0}, {"from": 1, "offset": 0}]}, "unsorted tz"),
        (c.FleetRequest, {"transaction": "t", "reply_to": "fleet/#"}, "wildcard reply"),
    ],
)
def test_bad_payloads_are_rejected(model: type[c.Payload], payload: dict, why: str) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(payload)


def test_plain_switch_commands() -> None:
    assert c.parse_switch(b"on").state == "ON"
    assert c.parse_switch("TOGGLE").state == "TOGGLE"
    assert c.parse_switch(b'{"state": "OFF", "for": 5}').for_ == 5
    with pytest.raises(ValidationError):
        c.parse_switch(b"maybe")


def test_topics_build_and_parse() -> None:
    t = c.Topics(root="x/home", fleet="x/fleet")
    assert t.telemetry("ro-1") == "x/home/ro-1/telemetry"
    assert t.set("ro-1", c.Command.SWITCH) == "x/home/ro-1/set/switch"
    assert t.all_nodes(c.NodeTopic.STATE) == "x/home/+/state"
    assert t.parse("x/home/ro-1/telemetry") == c.ParsedTopic("ro-1", c.NodeTopic.TELEMETRY)
    assert t.parse("x/home/ro-1/set/stop").command is c.Command.STOP
    assert t.request("telemetry", "devices") == "x/fleet/telemetry/request/devices"
    for bad in ("x/home/ro-1", "x/home/RO/telemetry", "x/home/ro-1/nope", "y/home/ro-1/state", "x/home/ro-1/set/fly"):
        with pytest.raises(c.TopicError):
            t.parse(bad)
    with pytest.raises(c.TopicError):
        t.telemetry("a/b")
    with pytest.raises(c.TopicError):
        c.Topics(root="home/#")


_TOPIC_LITERAL = re.compile(r"""["'][^"'\n]*\b(?:telemetry|state|status|schedule|config|info|ack|log|set|request|reply|errors)/[^"'\n]*["']|["'](?:home|fleet|\$share)/[^"'\n]*["']""")


def test_no_topic_literal_outside_the_contracts_module() -> None:
    offenders = []
    for folder in ("nodefleet", "services"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.parent.name == "contracts":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if _TOPIC_LITERAL.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "topic strings belong in nodefleet/contracts/topics.py:\n" + "\n".join(offenders)

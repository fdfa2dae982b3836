"""The contract's two tables (node topics, fleet requests) against the code that uses them, and the committed
AsyncAPI document against the one the code generates."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nodefleet import contracts as c
from nodefleet.contracts import asyncapi, ota, requests
from nodefleet.contracts.provisioning import PROVISIONER_SERVICE
from nodefleet.contracts.queries import TELEMETRY_SERVICE
from nodefleet.contracts.scheduling import SCHEDULER_SERVICE
from nodefleet.fleet import TypedHandler

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(c.__file__).parent / "fixtures"


def _provisioner() -> dict[str, Any]:
    from services.provisioner.requests import handlers

    return handlers(None)  # type: ignore[arg-type]  # the handlers use the registry only when called


def _scheduler() -> dict[str, Any]:
    from services.scheduler.requests import handlers

    return handlers({}, None)  # type: ignore[arg-type]


def _telemetry() -> dict[str, Any]:
    from services.telemetry.queries import Queries

    return Queries(None).handlers()  # type: ignore[arg-type]


def _ota() -> dict[str, Any]:
    from services.ota.requests import handlers

    return handlers(None, None)  # type: ignore[arg-type]


HANDLERS: dict[str, Callable[[], dict[str, Any]]] = {
    PROVISIONER_SERVICE: _provisioner,
    SCHEDULER_SERVICE: _scheduler,
    TELEMETRY_SERVICE: _telemetry,
    ota.OTA_SERVICE: _ota,
}


# -- the fleet request table ---------------------------------------------------------------------------------


@pytest.mark.parametrize("service", requests.services())
def test_each_services_typed_handlers_match_the_request_table(service: str) -> None:
    assert service in HANDLERS, f"the request table lists {service!r}: add its handlers' factory to HANDLERS here"
    handlers = HANDLERS[service]()
    table = requests.actions(service)
    assert sorted(handlers) == sorted(table), f"{service}: actions answered != actions in the request table"
    for action, handler in handlers.items():
        assert isinstance(handler, TypedHandler), f"{service}/{action} is not a fleet.typed handler"
        assert handler.request_model is table[action].request, f"{service}/{action}: request model"
        assert handler.answer_type == table[action].answer, f"{service}/{action}: answer type"


def test_only_services_in_the_request_table_are_checked() -> None:
    assert set(HANDLERS) <= set(requests.services())


# -- the node topic table ------------------------------------------------------------------------------------


def test_every_node_topic_kind_has_a_row() -> None:
    kinds = [*c.NodeTopic, *c.Command, *c.OtaTopic]
    assert sorted(c.NODE_TOPICS, key=str) == sorted(kinds, key=str)
    for what, row in c.NODE_TOPICS.items():
        assert row.what is what
        if row.content_type == "application/json":
            assert row.payload is not None, f"{row.path}: a JSON topic needs its model"
        else:
            assert row.payload is None, f"{row.path}: {row.content_type} has no model"
    assert c.NODE_TOPICS[c.OtaTopic.DATA].content_type == "application/octet-stream"


def test_node_topic_rows_parse_back() -> None:
    topics = c.Topics(root="x/home")
    for what, row in c.NODE_TOPICS.items():
        assert topics.parse(f"x/home/n1/{row.path}").what is what
        assert topics.every_node(what) == f"x/home/+/{row.path}"


def test_commands_are_never_retained_and_config_and_state_are() -> None:
    for what, row in c.NODE_TOPICS.items():
        if isinstance(what, c.Command):
            assert not row.retained, row.path
    for kind in (c.NodeTopic.STATUS, c.NodeTopic.INFO, c.NodeTopic.STATE, c.NodeTopic.CONFIG, c.NodeTopic.SCHEDULE):
        assert c.NODE_TOPICS[kind].retained


def test_the_ota_rows_agree_with_the_ota_module() -> None:
    for what in c.OtaTopic:
        if c.NODE_TOPICS[what].payload is not None:
            assert ota.OTA_PAYLOADS[what.value] is c.NODE_TOPICS[what].payload


def test_every_json_row_has_a_fixture_that_validates() -> None:
    for row in c.NODE_TOPICS.values():
        if row.payload is None:
            continue
        stem = row.path.replace("/", "_")
        found = sorted(FIXTURES.glob(f"{stem}.json")) + sorted(FIXTURES.glob(f"{stem}_*.json"))
        assert found, f"no fixture for {row.path} ({stem}.json)"
        for path in found:
            row.payload.model_validate(json.loads(path.read_text()))


# -- the AsyncAPI document -----------------------------------------------------------------------------------


def test_the_committed_asyncapi_document_is_the_generated_one() -> None:
    committed = (ROOT / asyncapi.DEFAULT_OUTPUT).read_text()
    assert committed == asyncapi.render(), (
        f"{asyncapi.DEFAULT_OUTPUT} is not what the code generates: run `python -m nodefleet.contracts.asyncapi` "
        "and commit the result")


def test_the_check_command_agrees() -> None:
    done = subprocess.run([sys.executable, "-m", "nodefleet.contracts.asyncapi", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_document_covers_every_topic_and_request() -> None:
    doc = asyncapi.build()
    assert doc["asyncapi"] == "3.0.0"
    addresses = {channel["address"] for channel in doc["channels"].values()}
    for row in c.NODE_TOPICS.values():
        assert f"home/{{node}}/{row.path}" in addresses
    for service, action in requests.REQUESTS:
        assert c.Topics().request(service, action) in addresses
    # Every $ref resolves inside the document.
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/')[1:]}:
        node: Any = doc
        for key in ref.split("/"):
            node = node[key]


def test_generation_is_deterministic() -> None:
    assert asyncapi.render() == asyncapi.render()


def test_the_documents_payload_schemas_accept_the_fixtures_and_refuse_what_the_models_refuse() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    doc = asyncapi.build()

    def validator(channel: str, message: str) -> Any:
        ref = doc["channels"][channel]["messages"][message]["$ref"]
        return jsonschema.Draft202012Validator({**doc, "$ref": f"{ref}/payload"})

    checked = 0
    for row in c.NODE_TOPICS.values():
        if row.payload is None:
            continue
        channel = f"node.{row.path.replace('/', '.')}"
        message = "".join(part.capitalize() for part in row.path.split("/"))
        stem = row.path.replace("/", "_")
        for path in sorted(FIXTURES.glob(f"{stem}.json")) + sorted(FIXTURES.glob(f"{stem}_*.json")):
            validator(channel, message).validate(json.loads(path.read_text()))
            checked += 1
    assert checked >= len([row for row in c.NODE_TOPICS.values() if row.payload is not None])
    state = validator("node.state", "State")
    assert not state.is_valid({"v": 1, "seq": 1, "relay": "on", "mode": "auto"})  # relay must be ON/OFF
    reply = validator("fleet.reply", "telemetry.devices.reply")
    assert reply.is_valid({"v": 1, "transaction": "t1", "status": "ok", "data": [{"node": "n1"}]})
    assert reply.is_valid({"v": 1, "transaction": "t1", "status": "error", "error": "no", "data": None})
    assert not reply.is_valid({"v": 1, "transaction": "t1", "status": "ok", "data": [{"node": "Bad Name"}]})

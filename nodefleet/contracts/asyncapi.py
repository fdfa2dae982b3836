"""The AsyncAPI 3.0 document of the whole topic contract, generated from the code.

    python -m nodefleet.contracts.asyncapi            # write docs/asyncapi.json
    python -m nodefleet.contracts.asyncapi --check    # exit 1 if the committed document differs
    python -m nodefleet.contracts.asyncapi -o FILE    # write elsewhere ("-" for stdout)

Made from the node topic table (``node_topics.NODE_TOPICS``), the fleet
request table (``requests.REQUESTS``), the topic builders (``Topics``, default
roots ``home`` and ``fleet``) and the pydantic models, whose JSON schemas go
under ``components/schemas``: validation schemas for what a receiver accepts,
serialization schemas for answers.  Deterministic: keys sorted, no time stamps;
a test fails when docs/asyncapi.json is not what this module generates.

Operations are written from the publisher's side (``send``), except the
requests, written from the answering service's side (``receive``, with the
``reply`` on the requester's ``reply_to``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from .envelope import ErrorEvent, FleetReply, FleetRequest
from .node_topics import BINARY, JSON, NODE_TOPICS, TEXT, NodeTopicSpec
from .ota import FRAME_HEADER
from .payloads import PAYLOAD_VERSION
from .provisioning import HaSensor, HaSwitch
from .requests import REQUESTS
from .scheduling import RunEvent
from .topics import NODE_NAME_PATTERN, OFFLINE, ONLINE, RELEASE_PATTERN, Command, Topics

DEFAULT_OUTPUT = "docs/asyncapi.json"
REGENERATE = "python -m nodefleet.contracts.asyncapi"
_REPO = Path(__file__).resolve().parents[2]
_REFS = "#/components/schemas/{model}"
_BINDING = "0.2.0"


def _schemas(types: dict[str, tuple[Any, str]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """key -> (type, mode) as JSON schemas referring to ``components/schemas``, and those schemas."""
    inputs = [(key, mode, TypeAdapter(type_)) for key, (type_, mode) in types.items()]
    by_key, defs = TypeAdapter.json_schemas(inputs, ref_template=_REFS)
    schemas = defs.get("$defs", {})
    # Two models of one name in different modules come out module-qualified: keep the module only.
    renames = {name: ".".join(name.split("__")[-2:]) for name in schemas if "__" in name}
    if renames:
        text = json.dumps([{key: schema for (key, _), schema in by_key.items()}, schemas])
        for old, new in renames.items():
            text = text.replace(f'"{_REFS.format(model=old)}"', f'"{_REFS.format(model=new)}"')
        resolved, schemas = json.loads(text)
        schemas = {renames.get(name, name): schema for name, schema in schemas.items()}
        return resolved, schemas
    return {key: schema for (key, _), schema in by_key.items()}, schemas


def _mqtt(qos: int, retain: bool) -> dict[str, Any]:
    return {"mqtt": {"qos": qos, "retain": retain, "bindingVersion": _BINDING}}


def _message(name: str, summary: str, content_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "summary": summary, "contentType": content_type, "payload": payload}


def _text(values: tuple[str, ...], description: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values), "description": description}


def _binary(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "binary", "description": description}


FRAME = (f"one binary frame: header {FRAME_HEADER!r} (struct, big-endian: magic NF, version, kind 1 table / 2 block, "
         "index, release id = image sha256[:8], data length) then the data; see docs/ota.md")


def _channel_id(path: str) -> str:
    return path.replace("/", ".")


def build(topics: Topics | None = None) -> dict[str, Any]:
    """The document as a dict (``render`` gives its text)."""
    topics = topics or Topics()
    node_param = {"node": {"description": f"the node's name, ^{NODE_NAME_PATTERN}$"}}

    types: dict[str, tuple[Any, str]] = {}
    for row in NODE_TOPICS.values():
        if row.payload is not None:
            types[row.path] = (row.payload, "validation")
    for (service, action), spec in REQUESTS.items():
        types[f"{service}.{action}.request"] = (spec.request, "validation")
        types[f"{service}.{action}.answer"] = (spec.answer, "serialization")
    for name, model in (("FleetRequest", FleetRequest), ("FleetReply", FleetReply), ("ErrorEvent", ErrorEvent),
                        ("RunEvent", RunEvent), ("HaSwitch", HaSwitch), ("HaSensor", HaSensor)):
        types[name] = (model, "validation")
    schema, schemas = _schemas(types)

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}

    def add(channel_id: str, address: str | None, description: str, parameters: dict[str, Any] | None,
            channel_messages: dict[str, dict[str, Any]]) -> None:
        messages.update(channel_messages)
        channel: dict[str, Any] = {
            "address": address, "description": description,
            "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in channel_messages},
        }
        if parameters:
            channel["parameters"] = parameters
        channels[channel_id] = channel

    def operation(op_id: str, action: str, channel_id: str, summary: str, description: str, qos: int,
                  retain: bool, **extra: Any) -> None:
        operations[op_id] = {
            "action": action, "channel": {"$ref": f"#/channels/{channel_id}"}, "summary": summary,
            "description": description, "bindings": _mqtt(qos, retain),
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{name}"}
                         for name in channels[channel_id]["messages"]],
            **extra,
        }

    # -- node topics -----------------------------------------------------------------------------------------
    for row in NODE_TOPICS.values():
        channel_id = f"node.{_channel_id(row.path)}"
        add(channel_id, topics.every_node(row.what).replace("+", "{node}"), _node_description(row), node_param,
            _node_messages(row, schema))
        retained = "retained" if row.retained else "never retained" if isinstance(row.what, Command) else "not retained"
        operation(f"{channel_id}.publish", "send", channel_id, row.summary,
                  f"{row.sender} -> {row.receivers}; {retained}, QoS {row.qos}", row.qos, row.retained)

    # -- fleet requests and replies ----------------------------------------------------------------------------
    reply_messages: dict[str, dict[str, Any]] = {}
    for (service, action), spec in REQUESTS.items():
        reply_messages[f"{service}.{action}.reply"] = _message(
            f"{service}.{action}.reply", f"the answer to {service}/{action}", JSON,
            {"allOf": [{"$ref": _REFS.format(model="FleetReply")},
                       {"properties": {"data": {"anyOf": [schema[f"{service}.{action}.answer"], {"type": "null"}]}}}],
             "description": "status ok: data is the answer; status error: error says why (data null)"})
    reply_address = topics.reply("client").rsplit("/", 1)[0] + "/{client}"
    add("fleet.reply", reply_address,
        "a requester's own reply topic, named in each request's reply_to (the CLI's: this address)",
        {"client": {"description": "the requester's client id"}}, reply_messages)
    for (service, action), spec in REQUESTS.items():
        channel_id = f"{service}.request.{action}"
        add(channel_id, topics.request(service, action), f"{service}/{action}: {spec.summary}", None,
            {f"{service}.{action}.request": _message(
                f"{service}.{action}.request", spec.summary, JSON,
                {"allOf": [{"$ref": _REFS.format(model="FleetRequest")},
                           {"properties": {"data": schema[f"{service}.{action}.request"]}}]})})
        operation(f"{service}.{action}", "receive", channel_id, spec.summary,
                  f"CLI, apps -> {service} (every instance, or one of a shared subscription group); "
                  "answered on reply_to with the same transaction", 1, False,
                  reply={"address": {"location": "$message.payload#/reply_to",
                                     "description": "the request's reply_to"},
                         "channel": {"$ref": "#/channels/fleet.reply"},
                         "messages": [{"$ref": f"#/channels/fleet.reply/messages/{service}.{action}.reply"}]})

    # -- events, errors, service status, the shared OTA stream, discovery ----------------------------------------
    add("fleet.errors", topics.errors(), "rejected input and failures of every service, rate-limited per code", None,
        {"ErrorEvent": _message("ErrorEvent", "something was rejected or failed", JSON, schema["ErrorEvent"])})
    operation("fleet.errors.publish", "send", "fleet.errors", "error events",
              "every service -> anyone; at most 10 per code each 10 s, then one summary event (suppressed)", 0, False)
    add("scheduler.events", topics.scheduler_events(), "the scheduler's run events (run, backup, miss, skipped)",
        None, {"RunEvent": _message("RunEvent", "one outcome of one run", JSON, schema["RunEvent"])})
    operation("scheduler.events.publish", "send", "scheduler.events", "run events",
              "scheduler -> telemetry (stored for `nodefleet schedule history`)", 1, False)
    status = topics.service_status("service", "instance").split("/")
    add("fleet.services.status", "/".join([*status[:-2], "{service}", "{instance}"]),
        "one running service instance's availability (its last will says offline)",
        {"service": {"description": "the service"}, "instance": {"description": "the instance's name"}},
        {"ServiceStatus": _message("ServiceStatus", "online / offline", TEXT,
                                   _text((ONLINE, OFFLINE), "plain text"))})
    operation("fleet.services.status.publish", "send", "fleet.services.status", "service availability",
              "every service instance -> anyone; retained", 1, True)
    add("fleet.ota.data", topics.ota_streams().replace("+", "{release}"),
        "the one data stream of a release that every node downloading it shares",
        {"release": {"description": f"the release version, ^{RELEASE_PATTERN}$"}},
        {"OtaStreamFrame": _message("OtaStreamFrame", "a block or block-table frame", BINARY, _binary(FRAME))})
    operation("fleet.ota.data.publish", "send", "fleet.ota.data", "the shared block stream",
              "ota -> every node downloading the release; lost frames are repaired through ota/want", 0, False)
    for component, model in (("switch", "HaSwitch"), ("sensor", "HaSensor")):
        address = Topics.ha_discovery(component, "node", "object").split("/")
        channel_id = f"homeassistant.{component}"
        add(channel_id, "/".join([*address[:2], "{node}", "{object}", address[-1]]),
            f"Home Assistant MQTT discovery of a node's {component}s (the Homie 4 description under "
            f"{Topics.homie_device('node').split('/')[0]}/ is left out here)",
            {**node_param, "object": {"description": "relay, or the reading's name"}},
            {model: _message(model, f"discovery config of a {component}", JSON, schema[model])})
        operation(f"{channel_id}.publish", "send", channel_id, f"Home Assistant discovery ({component})",
                  "provisioner -> Home Assistant, at the node's first online; cleared when removed", 1, True)

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "nodefleet topic contract",
            "version": str(PAYLOAD_VERSION),
            "description": (
                "Every topic nodefleet's nodes, services and clients use, generated from nodefleet/contracts "
                f"(`{REGENERATE}`). MQTT 3.1.1: correlation ids, reply topics and versions travel in the JSON "
                "payload, not in MQTT 5 properties. Roots are configurable (home, fleet by default). "
                "Operations are written from the publisher's side (send), requests from the answering "
                "service's side (receive, with the reply on reply_to). info.version is the payload format "
                "version (v in every JSON payload)."),
        },
        "defaultContentType": JSON,
        "servers": {
            "broker": {"host": "localhost:1883", "protocol": "mqtt", "protocolVersion": "3.1.1",
                       "description": "Mosquitto 2 (reference) or nodefleet up's embedded amqtt; logins per "
                                      "service, per node and for the operator"},
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _node_description(row: NodeTopicSpec) -> str:
    return f"{row.summary} ({row.sender} -> {row.receivers})"


def _node_messages(row: NodeTopicSpec, schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    base = "".join(part.capitalize() for part in row.path.split("/"))
    out: dict[str, dict[str, Any]] = {}
    if row.payload is not None:
        out[base] = _message(base, row.summary, JSON, schema[row.path])
    if row.plain:
        out[f"{base}Plain"] = _message(f"{base}Plain", f"{row.path} as plain text", TEXT,
                                       _text(row.plain, "plain text, for openHAB and mosquitto_pub"))
    if row.content_type == BINARY:
        out[f"{base}Frame"] = _message(f"{base}Frame", row.summary, BINARY, _binary(FRAME))
    return out


def render(topics: Topics | None = None) -> str:
    """The document's text: JSON, keys sorted, two-space indent, one newline at the end."""
    return json.dumps(build(topics), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REGENERATE, description="Generate the AsyncAPI document of the topic "
                                     "contract from nodefleet/contracts.")
    parser.add_argument("-o", "--output", default=None, help=f"where to write it (default: {DEFAULT_OUTPUT} in "
                        "the checkout; - for stdout)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file differs")
    args = parser.parse_args(argv)
    text = render()
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    path = Path(args.output) if args.output else _REPO / DEFAULT_OUTPUT
    if args.check:
        current = path.read_text() if path.exists() else None
        if current != text:
            print(f"{path} is not what the code generates: run `{REGENERATE}` and commit it", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    path.write_text(text)
    print(f"wrote {path} ({len(build()['channels'])} channels)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

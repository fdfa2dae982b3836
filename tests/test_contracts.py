"""The topic contract and payload models, and the JSON fixtures both sides share."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from nodefleet import contracts as c
from nodefleet.contracts import ota

FIXTURES = Path(c.__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]


def fixture_model(name: str) -> type[c.Payload]:
    if name.startswith("ota_"):
        return ota.OTA_PAYLOADS[name.split("_")[1]]
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
    assert set(ota.OTA_PAYLOADS) <= {p.stem.split("_")[1] for p in FIXTURES.glob("ota_*.json")}


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


_TOPIC_LITERAL = re.compile(r"""["'][^"'\n]*\b(?:telemetry|state|status|schedule|config|info|ack|log|set|request|reply|errors|ota)/[^"'\n]*["']|["'](?:home|fleet|\$share)/[^"'\n]*["']""")


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


# -- OTA -----------------------------------------------------------------------

FIXTURE_KEY = ota.device_key(b"nodefleet-fixture-master-key", "ro-purifier")
"""The key ota_offer.json is tagged with (see fixtures/README.md)."""


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_ota_topics() -> None:
    t = c.Topics(root="x/home", fleet="x/fleet")
    assert t.ota("ro-1", c.OtaTopic.OFFER) == "x/home/ro-1/ota/offer"
    assert t.ota_stream("1.5.0-rc.1") == "x/fleet/ota/data/1.5.0-rc.1"
    assert t.all_ota(c.OtaTopic.PROGRESS) == "x/home/+/ota/progress"
    assert t.parse("x/home/ro-1/ota/want") == c.ParsedTopic("ro-1", None, ota=c.OtaTopic.WANT)
    # The node may read its offer, its repairs and every shared stream; nothing else of the fleet.
    assert t.node_ota_inbox("ro-1") == ["x/home/ro-1/ota/offer", "x/home/ro-1/ota/data"]
    assert t.ota_streams() in t.node_inbox("ro-1")
    # Of its own ota/ topics only offer and data: never its own want and progress.
    assert t.node_inbox("ro-1") == ["x/home/ro-1/set/#", "x/home/ro-1/config", "x/home/ro-1/schedule",
                                                     *t.node_ota_inbox("ro-1"), t.ota_streams()]
    # It publishes what the firmware sends and its OTA want and progress: never an offer, a frame, its config.
    outbox = t.node_outbox("ro-1")
    assert t.ota("ro-1", c.OtaTopic.WANT) in outbox and t.ota("ro-1", c.OtaTopic.PROGRESS) in outbox
    published = {t.status("ro-1"), t.info("ro-1"), t.state("ro-1"), t.telemetry("ro-1"), t.log("ro-1"), t.ack("ro-1")}
    assert published <= set(outbox)
    for forbidden in (t.ota("ro-1", c.OtaTopic.OFFER), t.ota("ro-1", c.OtaTopic.DATA), t.config("ro-1"),
                      t.schedule("ro-1"), t.set("ro-1", c.Command.SWITCH), t.ota_stream("1.4.0")):
        assert forbidden not in outbox
    assert all("+" not in f and "#" not in f for f in outbox)
    for bad in ("1.4", "v1.4.0", "1.4.0/x", "1.4.0+build", "request"):
        with pytest.raises(c.TopicError):
            t.ota_stream(bad)
    with pytest.raises(c.TopicError):
        t.parse("x/home/ro-1/ota/nope")


def test_offer_fixture_is_tagged_for_its_node_only() -> None:
    offer = ota.Offer.model_validate(_fixture("ota_offer.json"))
    manifest = ota.Manifest.model_validate(_fixture("ota_manifest.json"))
    assert offer.verify(FIXTURE_KEY, "ro-purifier")
    assert manifest.offer(node="ro-purifier", key=FIXTURE_KEY, stream=offer.stream, rollout=offer.rollout) == offer
    assert not offer.verify(FIXTURE_KEY, "kitchen")
    assert not offer.verify(ota.device_key(b"nodefleet-fixture-master-key", "kitchen"), "ro-purifier")
    # Every authenticated field changes the tag; stream and rollout do not count.
    for change in ({"force": True}, {"size": 5001, "blocks": 2}, {"sha256": "0" * 64}, {"release": "1.4.1"},
                   {"table": ["1" * 64]}, {"block_size": 5120}, {"format": "esp32-app"}):
        assert not offer.model_copy(update=change).verify(FIXTURE_KEY, "ro-purifier"), change
    assert offer.model_copy(update={"stream": "elsewhere", "rollout": None}).verify(FIXTURE_KEY, "ro-purifier")


def test_table_frame_fixture_matches_the_manifest() -> None:
    manifest = ota.Manifest.model_validate(_fixture("ota_manifest.json"))
    frame = ota.decode_frame((FIXTURES / "ota_table_frame.bin").read_bytes())
    assert (frame.kind, frame.index, frame.release_id) == (ota.KIND_TABLE, 0, manifest.release_id())
    assert frame.data == manifest.table() and len(frame.data) == 2 * ota.DIGEST_SIZE
    assert ota.encode_frame(kind=frame.kind, index=0, release_id=frame.release_id, data=frame.data) == \
        (FIXTURES / "ota_table_frame.bin").read_bytes()


def test_frames_and_bitmaps() -> None:
    rid = bytes(range(8))
    raw = ota.encode_frame(kind=ota.KIND_BLOCK, index=300, release_id=rid, data=b"x" * 4096)
    assert len(raw) == ota.FRAME_HEADER_SIZE + 4096 == 4116
    assert ota.decode_frame(raw) == ota.Frame(ota.KIND_BLOCK, 300, rid, b"x" * 4096)
    for bad in (raw[:10], raw[:-1], b"XX" + raw[2:], raw[:3] + b"\x09" + raw[4:]):
        with pytest.raises(ota.FrameError):
            ota.decode_frame(bad)
    with pytest.raises(ota.FrameError):
        ota.encode_frame(kind=3, index=0, release_id=rid, data=b"")
    want = ota.Want(release="1.4.0", session="s1", got=0, window=8, have=ota.bitmap({0, 9, 10}, 11))
    assert want.missing(11) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert ota.Want.model_validate(_fixture("ota_want.json")).missing(3) == [1]
    with pytest.raises(ota.FrameError):
        want.missing(20)


@pytest.mark.parametrize(
    ("model", "change", "why"),
    [
        (ota.Manifest, {"blocks": []}, "no blocks"),
        (ota.Manifest, {"size": 9000}, "block count does not match the size"),
        (ota.Manifest, {"version": "1.4"}, "not a version"),
        (ota.Manifest, {"block_size": 1000}, "block size not a multiple of 1 KiB"),
        (ota.Manifest, {"files": []}, "nfi1 without files"),
        (ota.Manifest, {"files": [{"path": "../x.mpy", "offset": 0, "size": 1, "sha256": "0" * 64}]}, "path escapes"),
        (ota.Manifest, {"files": [{"path": "a", "offset": 4990, "size": 20, "sha256": "0" * 64}]}, "file past the end"),
        (ota.Offer, {"blocks": 3}, "blocks do not match the size"),
        (ota.Offer, {"table": []}, "no table digests"),
        (ota.Offer, {"tag": "ABC"}, "tag not hex"),
        (ota.Progress, {"state": "failed"}, "failure without a reason"),
        (ota.Progress, {"state": "paused"}, "unknown state"),
        (ota.Progress, {"bytes": 6000}, "more bytes than the image"),
        (ota.Want, {"window": 0}, "no window"),
        (ota.Want, {"have": "not base64!"}, "bitmap not base64"),
    ],
)
def test_bad_ota_payloads_are_rejected(model: type[c.Payload], change: dict, why: str) -> None:
    name = {ota.Manifest: "ota_manifest", ota.Offer: "ota_offer", ota.Progress: "ota_progress", ota.Want: "ota_want"}
    with pytest.raises(ValidationError):
        model.model_validate({**_fixture(name[model] + ".json"), **change})


def test_mqtt_config_carries_the_nodes_ota_key() -> None:
    from nodefleet.contracts.provisioning import MqttConfig

    base = {"broker_host": "h", "broker_port": 1883, "topic_prefix": "home/ro-1", "node_name": "ro-1",
            "username": "ro-1", "password": "pw"}
    assert MqttConfig.model_validate(base).ota_key is None  # configs from before the key
    key = ota.device_key(bytes(32), "ro-1").hex()
    assert MqttConfig.model_validate({**base, "ota_key": key}).ota_key == key
    for bad in ("ab" * 31, "AB" * 32, "zz" * 32, key + "00"):
        with pytest.raises(ValidationError):
            MqttConfig.model_validate({**base, "ota_key": bad})


def test_the_firmware_takes_exactly_the_config_fields_of_the_contract():
    import ast

    from nodefleet.contracts.payloads import Config
    from nodefleet.sim import FIRMWARE_DIR

    tree = ast.parse((FIRMWARE_DIR / "settings.py").read_text())
    fields = next(ast.literal_eval(node.value) for node in tree.body
                  if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "FIELDS")
    assert list(fields) == list(Config.model_fields)


@pytest.mark.parametrize("number", ["Infinity", "-Infinity", "NaN"])
def test_json_without_infinity_or_nan(number):
    # Python's json reads these, JSON has none: a dump would make them null, so they are refused on the way in.
    with pytest.raises(ValidationError, match="finite"):
        c.Telemetry.model_validate_json(f'{{"v": 1, "seq": 1, "readings": {{"temperature": {number}}}}}')
    with pytest.raises(ValidationError, match="Infinity or NaN"):
        c.FleetReply.model_validate(json.loads(f'{{"v": 1, "transaction": "t1", "status": "ok", "data": [{number}]}}'))
    with pytest.raises(ValidationError, match="Infinity or NaN"):
        c.FleetRequest.model_validate(json.loads(
            f'{{"v": 1, "transaction": "t1", "reply_to": "r/1", "data": {{"x": {{"y": {number}}}}}}}'))

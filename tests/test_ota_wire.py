"""The OTA topics on both secured brokers: nodes share a release's stream, each gets only its own offer and repairs,
and a node may neither publish offers or data nor read another node's."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from broker_probe import QUIET, Probe
from broker_security import NODES, PREFIX, RECEIVER_NODES, SERVICE

from nodefleet.contracts import Command, OtaTopic, Topics
from nodefleet.contracts import ota


@pytest.fixture
def probes(secured_broker):
    made: list[Probe] = []

    def make(username: str) -> Probe:
        password = dict([SERVICE, *NODES.items(), *RECEIVER_NODES.items()])[username]
        probe = Probe(secured_broker.host, secured_broker.port, username=username, password=password).connect()
        made.append(probe)
        return probe

    yield make
    for probe in made:
        probe.close()


def test_nodes_share_the_stream_and_get_only_their_own_offer_and_repairs(probes) -> None:
    topics = Topics(root=PREFIX)  # the ACL of the secured brokers: fleet root "fleet"
    release = f"1.4.0-t{uuid.uuid4().hex[:8]}"  # the stream topic is fleet-wide: one release per test
    nodes = {name: probes(name) for name in NODES}
    for name, probe in nodes.items():
        # Frames at QoS 0: amqtt would deliver at the subscription's QoS.
        assert probe.subscribe(topics.ota_stream(release), qos=0) == 0
        assert [probe.subscribe(f, qos=0) for f in topics.node_ota_inbox(name)] == [0, 0]
        probe.subscribe(topics.requests("ota"), qos=0)  # not a node's to read: refused or filtered
    service = probes(SERVICE[0])
    rid = os.urandom(8)
    block = ota.encode_frame(kind=ota.KIND_BLOCK, index=3, release_id=rid, data=os.urandom(4096))
    repair = ota.encode_frame(kind=ota.KIND_BLOCK, index=5, release_id=rid, data=os.urandom(1000))
    service.publish(topics.ota_stream(release), block, qos=0)
    service.publish(topics.ota("node-a", OtaTopic.DATA), repair, qos=0)
    service.publish(topics.ota("node-b", OtaTopic.OFFER), b"{}", qos=1)
    service.publish(topics.request("ota", "status"), b"{}", qos=0)
    got_a = {(m.topic, m.payload, m.qos) for m in nodes["node-a"].get_many(2)}
    assert got_a == {(topics.ota_stream(release), block, 0), (topics.ota("node-a", OtaTopic.DATA), repair, 0)}
    got_b = {(m.topic, m.payload) for m in nodes["node-b"].get_many(2)}
    assert got_b == {(topics.ota_stream(release), block), (topics.ota("node-b", OtaTopic.OFFER), b"{}")}
    assert ota.decode_frame(block).data == block[ota.FRAME_HEADER_SIZE:]
    for probe in nodes.values():
        assert probe.nothing_within(QUIET) == []
    # A node's want and progress reach the service through the per-node filters.
    service.subscribe(topics.all_ota(OtaTopic.WANT))
    want = ota.Want(release=release, session="s1", got=1, window=8, have=ota.bitmap({0}, 3))
    nodes["node-a"].publish(topics.ota("node-a", OtaTopic.WANT), want.model_dump_json(), qos=0)
    got = service.get()
    assert got.topic == topics.ota("node-a", OtaTopic.WANT)
    assert ota.Want.model_validate(json.loads(got.payload)).missing(3) == [1, 2]


def _frame() -> bytes:
    return ota.encode_frame(kind=ota.KIND_BLOCK, index=0, release_id=os.urandom(8), data=os.urandom(512))


def test_a_node_may_not_publish_offers_or_data_nor_read_another_nodes(probes) -> None:
    topics = Topics(root=PREFIX)
    release = f"1.4.0-t{uuid.uuid4().hex[:8]}"
    service = probes(SERVICE[0])
    for kind in OtaTopic:
        assert service.subscribe(topics.all_ota(kind), qos=0) == 0
    assert service.subscribe(topics.ota_streams(), qos=0) == 0
    node = probes("node-a")
    # Another node's offer and repairs, or every node's: refused (amqtt) or never delivered (Mosquitto).
    for topic_filter in (topics.ota("node-b", OtaTopic.OFFER), topics.ota("node-b", OtaTopic.DATA),
                         topics.all_ota(OtaTopic.OFFER), f"{PREFIX}/+/ota/#"):
        node.subscribe(topic_filter, qos=0)
    # A forged offer or frame, for itself, another node or the shared stream, is dropped by the broker.
    node.publish(topics.ota("node-a", OtaTopic.OFFER), b"{}", qos=1)
    node.publish(topics.ota("node-b", OtaTopic.OFFER), b"{}", qos=1)
    node.publish(topics.ota("node-a", OtaTopic.DATA), _frame(), qos=1)
    node.publish(topics.ota_stream(release), _frame(), qos=1)
    # Its want and progress go through.
    want = ota.Want(release=release, session="s1", got=0, window=8, have=ota.bitmap(set(), 3))
    progress = ota.Progress(release=release, state="downloading", bytes=0, size=3 * 4096)
    node.publish(topics.ota("node-a", OtaTopic.WANT), want.model_dump_json(), qos=0)
    node.publish(topics.ota("node-a", OtaTopic.PROGRESS), progress.model_dump_json(), qos=1)
    got = {m.topic for m in service.get_many(2)}
    assert got == {topics.ota("node-a", OtaTopic.WANT), topics.ota("node-a", OtaTopic.PROGRESS)}
    assert service.nothing_within(QUIET) == []
    # What the service sends to another node never reaches it.
    service.publish(topics.ota("node-b", OtaTopic.OFFER), b"{}", qos=1)
    service.publish(topics.ota("node-b", OtaTopic.DATA), _frame(), qos=0)
    seen = {m.topic for m in node.nothing_within(QUIET)}
    assert seen <= {topics.ota("node-a", kind) for kind in OtaTopic}, seen


def test_the_firmwares_subscription_is_granted_and_reads_only_its_offer_and_data(probes) -> None:
    """The filters normal mode subscribes to (``set/#``, config, schedule, ``ota/offer``, ``ota/data``) are all
    granted; the node's own want and progress never reach it, and a wider ``ota/#`` is refused (amqtt, dynamic
    security) or granted but filtered (Mosquitto's acl_file) without costing the node its other filters."""
    topics = Topics(root=PREFIX)
    name = "node-r"
    node, service = probes(name), probes(SERVICE[0])
    prefix = topics.prefix(name)
    firmware = [f"{prefix}/set/#", f"{prefix}/config", f"{prefix}/schedule", *topics.node_ota_inbox(name)]
    assert node.subscribe_many(firmware, qos=1) == [1, 1, 1, 1, 1]
    service.publish(topics.set(name, Command.SWITCH), b"ON", qos=1)
    service.publish(topics.ota(name, OtaTopic.PROGRESS), b"{}", qos=1)  # its own progress: not for it to read
    assert node.get().topic == topics.set(name, Command.SWITCH)
    assert node.nothing_within(QUIET) == []
    for kind in OtaTopic:
        service.publish(topics.ota(name, kind), kind.value, qos=0)
    got = {(m.topic, m.payload) for m in node.get_many(2)}
    assert got == {(topics.ota(name, OtaTopic.OFFER), b"offer"), (topics.ota(name, OtaTopic.DATA), b"data")}
    assert node.nothing_within(QUIET) == []
    assert node.subscribe_many([f"{prefix}/ota/#"], qos=0)[0] in (0, 128)
    service.publish(topics.ota(name, OtaTopic.WANT), b"{}", qos=0)
    assert node.nothing_within(QUIET) == []

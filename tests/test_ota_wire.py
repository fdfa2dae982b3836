"""The OTA topics on both secured brokers: nodes share a release's stream, each gets only its own offer and repairs."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from broker_probe import QUIET, Probe
from broker_security import NODES, PREFIX, SERVICE

from nodefleet.contracts import OtaTopic, Topics
from nodefleet.contracts import ota


@pytest.fixture
def probes(secured_broker):
    made: list[Probe] = []

    def make(username: str) -> Probe:
        password = dict([SERVICE, *NODES.items()])[username]
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

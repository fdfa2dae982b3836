"""The MQTT 3.1.1 behaviour nodefleet relies on, checked on Mosquitto and on the embedded amqtt alike.

Every test runs once per broker (the ``broker`` / ``secured_broker`` fixtures).
A failure on amqtt only means our embedding (nodefleet/embedded/amqtt_*.py) no
longer hides one of amqtt's defects; docs/embedded-broker.md lists them.
Run with NODEFLEET_AMQTT_UNPATCHED=1 to see which tests plain amqtt 0.12.1 fails.
"""

from __future__ import annotations

import time
import uuid

import pytest
from broker_probe import QUIET, Probe, payloads
from broker_security import NODES, PREFIX, SERVICE

pytestmark = pytest.mark.timeout(30)

@pytest.fixture
def probes(broker):
    """Factory of connected probes on ``broker``; all are closed after the test."""
    made: list[Probe] = []

    def make(**options) -> Probe:
        connect = options.pop("connect", True)
        probe = Probe(broker.host, broker.port, **options)
        made.append(probe)
        return probe.connect() if connect else probe

    yield make
    for probe in made:
        probe.close()


# -- retained messages --------------------------------------------------------


def test_retained_delivered_only_on_matching_subscriptions(probes, root) -> None:
    publisher = probes()
    publisher.publish(f"{root}/a/state", b"a", retain=True)
    publisher.publish(f"{root}/b/state", b"b", retain=True)

    reader = probes()
    reader.subscribe(f"{root}/a/#")
    got = reader.get()
    assert (got.topic, got.payload, got.retain) == (f"{root}/a/state", b"a", True)
    assert reader.nothing_within(QUIET) == []


def test_retained_not_replayed_to_other_clients_on_connect(probes, root) -> None:
    probes().publish(f"{root}/a/state", b"a", retain=True)
    watcher = probes(client_id=f"w-{uuid.uuid4().hex[:8]}", clean_session=False)
    watcher.subscribe(f"{root}/a/#")
    assert watcher.get().payload == b"a"

    newcomer = probes()
    assert newcomer.nothing_within(QUIET) == [], "a retained message of another client's filter was sent on connect"
    newcomer.subscribe(f"{root}/b/#")
    assert newcomer.nothing_within(QUIET) == []

    # A persistent session coming back has its subscriptions, but retained messages go out on SUBSCRIBE only.
    watcher.disconnect()
    again = probes(client_id=watcher.client_id, clean_session=False)
    assert again.session_present
    assert again.nothing_within(QUIET) == []


def test_empty_retained_publish_clears_the_retained_message(probes, root) -> None:
    publisher = probes()
    publisher.publish(f"{root}/n/config", b"v1", retain=True)
    publisher.publish(f"{root}/n/config", b"", retain=True)
    reader = probes()
    reader.subscribe(f"{root}/n/config")
    assert reader.nothing_within(QUIET) == []


# -- last will -----------------------------------------------------------------


def test_will_published_and_retained_on_unclean_disconnect(probes, root) -> None:
    status = f"{root}/n/status"
    watcher = probes()
    watcher.subscribe(status)
    node = probes(will=(status, b"offline", 1, True))
    node.drop()
    got = watcher.get()
    assert (got.topic, got.payload) == (status, b"offline")

    later = probes()
    later.subscribe(status)
    assert (later.get().payload, True) == (b"offline", True)


def test_no_will_on_clean_disconnect(probes, root) -> None:
    status = f"{root}/n/status"
    watcher = probes()
    watcher.subscribe(status)
    node = probes(will=(status, b"offline", 1, True))
    node.disconnect()
    assert watcher.nothing_within(QUIET) == []


def test_will_published_when_a_client_goes_silent(probes, root) -> None:
    status = f"{root}/n/status"
    watcher = probes()
    watcher.subscribe(status)
    node = probes(will=(status, b"offline", 1, True), keepalive=1)
    node.go_silent()  # no FIN, no PINGREQ: a node that lost power; the broker must notice by keepalive
    assert watcher.get(timeout=8).payload == b"offline"  # Mosquitto checks keepalives about every 5 s


def test_an_idle_client_that_pings_stays_connected(probes, root) -> None:
    status = f"{root}/n/status"
    watcher = probes()
    watcher.subscribe(status)
    node = probes(will=(status, b"offline", 1, True), keepalive=1)
    node.subscribe(f"{root}/n/set/#")
    time.sleep(2.5)  # idle past 1.5 x keepalive, only PINGREQs go out
    probes().publish(f"{root}/n/set/switch", b"ON")
    assert node.get().payload == b"ON"
    assert watcher.nothing_within(QUIET) == [], "no will while the client pings"


def test_a_new_connection_takes_over_the_client_id_of_a_dead_one(probes, root) -> None:
    """A node that rebooted reconnects before the broker noticed its old connection was gone."""
    client_id = f"node-{uuid.uuid4().hex[:8]}"
    old = probes(client_id=client_id, clean_session=False)
    old.subscribe(f"{root}/n/set/#")
    old.go_silent()
    new = probes(client_id=client_id, clean_session=False)
    assert new.session_present
    time.sleep(QUIET)  # the old connection's end must not mark the new one offline
    probes().publish(f"{root}/n/set/switch", b"ON")
    assert new.get().payload == b"ON"
    assert new.nothing_within(QUIET) == []


# -- QoS 1 persistent sessions ----------------------------------------------------


def test_persistent_session_gets_what_was_published_while_away(probes, root) -> None:
    client_id = f"svc-{uuid.uuid4().hex[:8]}"
    service = probes(client_id=client_id, clean_session=False)
    service.subscribe(f"{root}/+/telemetry", qos=1)
    service.disconnect()

    publisher = probes()
    for seq in range(3):
        publisher.publish(f"{root}/n{seq}/telemetry", str(seq).encode(), qos=1)

    back = probes(client_id=client_id, clean_session=False)
    assert back.session_present
    got = back.get_many(3)
    assert sorted(payloads(got)) == [b"0", b"1", b"2"]
    assert [m.retain for m in got] == [False] * 3, "queued messages must not be marked retained"
    assert [m.qos for m in got] == [1] * 3


def test_unacknowledged_messages_are_redelivered_after_reconnect(probes, root) -> None:
    client_id = f"svc-{uuid.uuid4().hex[:8]}"
    service = probes(client_id=client_id, clean_session=False, manual_ack=True)
    service.subscribe(f"{root}/+/telemetry", qos=1)
    publisher = probes()
    publisher.publish(f"{root}/a/telemetry", b"first", qos=1)
    publisher.publish(f"{root}/b/telemetry", b"second", qos=1)
    assert sorted(payloads(service.get_many(2))) == [b"first", b"second"]
    # Held unacknowledged past amqtt's 5 s PUBACK timeout (a batch waiting for its commit), then a crash.
    time.sleep(5.5)
    service.drop()

    back = probes(client_id=client_id, clean_session=False, manual_ack=True)
    again = back.get_many(2)
    assert sorted(payloads(again)) == [b"first", b"second"]
    assert all(message.dup for message in again), "a resent PUBLISH carries DUP=1"
    for message in again:
        back.ack(message)
    assert back.nothing_within(QUIET) == []


def test_several_qos1_messages_in_flight_to_one_subscriber(probes, root) -> None:
    """The telemetry service acknowledges after its batch commits: the broker must not wait for each PUBACK."""
    service = probes(manual_ack=True)
    service.subscribe(f"{root}/+/telemetry", qos=1)
    publisher = probes()
    for seq in range(50):
        publisher.client.publish(f"{root}/n/telemetry", str(seq).encode(), qos=1)
    got = service.get_many(50, timeout=5)
    assert len(got) == 50
    assert payloads(got) == [str(seq).encode() for seq in range(50)], "order of one publisher's messages"
    for message in got:
        service.ack(message)


# -- effective QoS ------------------------------------------------------------


@pytest.mark.parametrize(("publish_qos", "subscribe_qos", "expected"), [(0, 1, 0), (1, 0, 0), (1, 1, 1)])
def test_delivered_qos_is_min_of_publish_and_subscription(probes, root, publish_qos, subscribe_qos, expected) -> None:
    reader = probes()
    reader.subscribe(f"{root}/q", qos=subscribe_qos)
    probes().publish(f"{root}/q", b"x", qos=publish_qos)
    assert reader.get().qos == expected


def test_overlapping_subscriptions_deliver_one_copy_at_the_highest_qos(probes, root) -> None:
    reader = probes()
    reader.subscribe(f"{root}/#", qos=0)
    reader.subscribe(f"{root}/n/telemetry", qos=1)
    probes().publish(f"{root}/n/telemetry", b"x", qos=1)
    assert [m.qos for m in reader.get_many(1)] == [1]
    assert reader.nothing_within(QUIET) == [], "a second copy"


def test_retained_delivered_at_min_qos(probes, root) -> None:
    probes().publish(f"{root}/r", b"x", qos=0, retain=True)
    reader = probes()
    reader.subscribe(f"{root}/r", qos=1)
    assert reader.get().qos == 0


# -- shared subscriptions -----------------------------------------------------------


def test_shared_subscription_splits_the_load(probes, root) -> None:
    group = f"$share/g{uuid.uuid4().hex[:6]}/{root}/+/telemetry"
    members = [probes(), probes()]
    for member in members:
        assert member.subscribe(group, qos=1) == 1
    everything = probes()
    everything.subscribe(f"{root}/+/telemetry", qos=1)
    publisher = probes()
    for seq in range(20):
        publisher.publish(f"{root}/n/telemetry", str(seq).encode(), qos=1)

    assert len(everything.get_many(20)) == 20
    time.sleep(QUIET)
    shares = [payloads(member.drain()) for member in members]
    assert sorted(shares[0] + shares[1], key=int) == [str(seq).encode() for seq in range(20)], "each message once"
    assert all(shares), f"both members get part of the load: {[len(s) for s in shares]}"


# -- authentication and topic ACL -------------------------------------------------------


@pytest.fixture
def secure_probes(secured_broker):
    made: list[Probe] = []

    def make(username: str | None, password: str | None = None, *, connect: bool = True, **options) -> Probe:
        if username is not None and password is None:
            password = dict([SERVICE, *NODES.items()])[username]
        probe = Probe(secured_broker.host, secured_broker.port, username=username, password=password, **options)
        made.append(probe)
        return probe.connect() if connect else probe

    yield make
    for probe in made:
        probe.close()


def test_right_password_accepted_wrong_one_refused(secure_probes) -> None:
    assert secure_probes("node-a", connect=False).try_connect() == 0
    assert secure_probes("node-a", "wrong", connect=False).try_connect() != 0
    assert secure_probes("nobody", "pw", connect=False).try_connect() != 0


def test_a_refused_connection_leaves_the_session_of_its_client_id_alone(secure_probes) -> None:
    tag = uuid.uuid4().hex[:8]
    client_id = f"svc-{tag}"
    service = secure_probes(SERVICE[0], client_id=client_id, clean_session=False)
    # A topic of the node's outbox (Topics.node_outbox); the tag is in the payload.
    service.subscribe(f"{PREFIX}/node-a/telemetry")
    service.disconnect()
    secure_probes("node-a").publish(f"{PREFIX}/node-a/telemetry", b"kept " + tag.encode())
    intruder = secure_probes(SERVICE[0], "wrong", client_id=client_id, clean_session=True, connect=False)
    assert intruder.try_connect() != 0
    back = secure_probes(SERVICE[0], client_id=client_id, clean_session=False)
    assert back.session_present
    assert back.get().payload == b"kept " + tag.encode()


def test_anonymous_refused_when_secured(secure_probes) -> None:
    assert secure_probes(None, connect=False).try_connect() != 0


def test_node_cannot_publish_outside_its_prefix(secure_probes) -> None:
    tag = uuid.uuid4().hex[:8]
    service = secure_probes(SERVICE[0])
    # Telemetry is in every node's outbox (Topics.node_outbox), not retained; the tag is in the payload.
    service.subscribe(f"{PREFIX}/+/telemetry")
    node = secure_probes("node-a")
    node.publish(f"{PREFIX}/node-b/telemetry", b"forged " + tag.encode())  # 3.1.1 has no refusal: dropped
    node.publish(f"{PREFIX}/node-a/telemetry", b"own " + tag.encode())
    got = service.get()
    assert (got.topic, got.payload) == (f"{PREFIX}/node-a/telemetry", b"own " + tag.encode())
    assert service.nothing_within(QUIET) == []


def test_node_receives_only_its_own_commands(secure_probes) -> None:
    tag = uuid.uuid4().hex[:8]
    node = secure_probes("node-a")
    node.subscribe(f"{PREFIX}/#")  # too wide: refused, or granted but filtered
    node.subscribe(f"{PREFIX}/node-b/set/#")
    assert node.subscribe(f"{PREFIX}/node-a/set/#") in (0, 1)
    service = secure_probes(SERVICE[0])
    service.publish(f"{PREFIX}/node-b/set/{tag}", b"not for a")
    service.publish(f"{PREFIX}/node-a/{tag}", b"not a command")
    service.publish(f"{PREFIX}/node-a/set/{tag}", b"for a")
    got = node.get()
    assert (got.topic, got.payload) == (f"{PREFIX}/node-a/set/{tag}", b"for a")
    assert node.nothing_within(QUIET) == []

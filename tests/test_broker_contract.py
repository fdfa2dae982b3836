"""The MQTT 3.1.1 behaviour nodefleet relies on, checked on Mosquitto and on the embedded amqtt alike.

Every test runs once per broker (the ``broker`` / ``secured_broker`` fixtures).
A failure on amqtt only means our embedding (nodefleet/embedded/amqtt_*.py) no
longer hides one of amqtt's defects; docs/embedded-broker.md lists them.
Run with NODEFLEET_AMQTT_UNPATCHED=1 to see which tests plain amqtt 0.12.1 fails.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from broker_probe import Probe
from broker_security import NODES, PREFIX, SERVICE

pytestmark = pytest.mark.timeout(30)

QUIET = 0.4  # how long "nothing arrives" is watched for


@pytest.fixture
def root(topics) -> str:
    """A topic prefix no other test uses."""
    return topics.root


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


def payloads(messages) -> list[bytes]:
    return [m.payload for m in messages]


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
    service.subscribe(f"{PREFIX}/node-a/{tag}/#")
    service.disconnect()
    secure_probes("node-a").publish(f"{PREFIX}/node-a/{tag}/telemetry", b"kept")
    intruder = secure_probes(SERVICE[0], "wrong", client_id=client_id, clean_session=True, connect=False)
    assert intruder.try_connect() != 0
    back = secure_probes(SERVICE[0], client_id=client_id, clean_session=False)
    assert back.session_present
    assert back.get().payload == b"kept"


def test_anonymous_refused_when_secured(secure_probes) -> None:
    assert secure_probes(None, connect=False).try_connect() != 0


def test_node_cannot_publish_outside_its_prefix(secure_probes) -> None:
    tag = uuid.uuid4().hex[:8]
    service = secure_probes(SERVICE[0])
    service.subscribe(f"{PREFIX}/+/{tag}")  # scoped: other tests leave retained messages under PREFIX
    node = secure_probes("node-a")
    node.publish(f"{PREFIX}/node-b/{tag}", b"forged")  # 3.1.1 has no refusal: the broker drops it
    node.publish(f"{PREFIX}/node-a/{tag}", b"own")
    got = service.get()
    assert (got.topic, got.payload) == (f"{PREFIX}/node-a/{tag}", b"own")
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


# -- the embedded broker only: what the provisioner and `nodefleet up` use beyond MQTT ------------


def test_clients_added_and_removed_at_run_time(secured_amqtt) -> None:
    broker = secured_amqtt.broker
    tag = uuid.uuid4().hex[:8]
    node = f"node-{tag}"
    secured_amqtt.call(broker.set_client, node, "pw-1", publish=[f"{PREFIX}/{node}/#"], subscribe=[f"{PREFIX}/{node}/set/#"])
    service = Probe(secured_amqtt.host, secured_amqtt.port, username=SERVICE[0], password=SERVICE[1]).connect()
    client = Probe(secured_amqtt.host, secured_amqtt.port, username=node, password="pw-1").connect()
    try:
        service.subscribe(f"{PREFIX}/+/{tag}")
        client.publish(f"{PREFIX}/node-a/{tag}", b"forged")
        client.publish(f"{PREFIX}/{node}/{tag}", b"own")
        assert service.get().payload == b"own"
        assert service.nothing_within(QUIET) == []
        assert secured_amqtt.call(broker.stats)["publish_denied"] >= 1

        assert secured_amqtt.call(broker.remove_client, node) is True
        time.sleep(0.2)
        assert not client.client.is_connected(), "a removed client's connection is closed"
        assert Probe(secured_amqtt.host, secured_amqtt.port, username=node, password="pw-1").try_connect() != 0
    finally:
        service.close()
        client.close()


def test_inflight_window_queues_the_rest_in_order(amqtt_broker, root, monkeypatch) -> None:
    from nodefleet.embedded import amqtt_handler

    monkeypatch.setattr(amqtt_handler, "MAX_INFLIGHT", 5)
    service = Probe(amqtt_broker.host, amqtt_broker.port, manual_ack=True).connect()
    publisher = Probe(amqtt_broker.host, amqtt_broker.port).connect()
    try:
        service.subscribe(f"{root}/+/telemetry", qos=1)
        for seq in range(12):
            publisher.publish(f"{root}/n/telemetry", str(seq).encode(), qos=1)
        received = service.get_many(5)
        assert service.nothing_within(QUIET) == [], "no more than the window before a PUBACK"
        while len(received) < 12:
            for message in received[-5:]:
                service.ack(message)
            received += service.get_many(min(5, 12 - len(received)))
        assert payloads(received) == [str(seq).encode() for seq in range(12)]
    finally:
        service.close()
        publisher.close()


def test_a_failing_delivery_does_not_stop_the_broker(amqtt_broker, root, monkeypatch) -> None:
    broker = amqtt_broker.broker._broker
    real_deliver = broker._deliver

    async def deliver(broadcast, session, qos):  # fault injected for one topic only
        if broadcast["topic"].endswith("/boom"):
            raise RuntimeError("injected")
        await real_deliver(broadcast, session, qos)

    monkeypatch.setattr(broker, "_deliver", deliver)
    reader = Probe(amqtt_broker.host, amqtt_broker.port).connect()
    publisher = Probe(amqtt_broker.host, amqtt_broker.port).connect()
    try:
        reader.subscribe(f"{root}/#")
        publisher.publish(f"{root}/boom", b"lost")
        publisher.publish(f"{root}/fine", b"delivered")
        assert reader.get().payload == b"delivered"
        assert amqtt_broker.call(amqtt_broker.broker.stats)["broadcast_failed"] >= 1
    finally:
        reader.close()
        publisher.close()


def test_a_full_session_queue_drops_and_counts(amqtt_broker, root, monkeypatch) -> None:
    from nodefleet.embedded import amqtt_broker as embedded, amqtt_handler

    monkeypatch.setattr(amqtt_handler, "MAX_INFLIGHT", 2)
    monkeypatch.setattr(embedded, "MAX_QUEUED", 3)
    service = Probe(amqtt_broker.host, amqtt_broker.port, manual_ack=True).connect()
    publisher = Probe(amqtt_broker.host, amqtt_broker.port).connect()
    try:
        service.subscribe(f"{root}/+/telemetry", qos=1)
        before = amqtt_broker.call(amqtt_broker.broker.stats).get("queue_full_dropped", 0)
        for seq in range(8):
            publisher.publish(f"{root}/n/telemetry", str(seq).encode(), qos=1)
        received = service.get_many(2)
        time.sleep(QUIET)
        assert amqtt_broker.call(amqtt_broker.broker.stats)["queue_full_dropped"] - before == 3
        while len(received) < 5:  # two in flight, three queued, three dropped
            for message in received[-2:]:
                service.ack(message)
            received += service.get_many(min(2, 5 - len(received)))
        assert payloads(received) == [str(seq).encode() for seq in range(5)]
        assert service.nothing_within(QUIET) == []
    finally:
        service.close()
        publisher.close()


async def test_port_in_use_is_refused_and_stop_frees_the_port() -> None:
    import socket

    from nodefleet.embedded.broker import BrokerPortInUse, EmbeddedBroker
    from nodefleet.embedded.mosquitto import free_port

    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(BrokerPortInUse, match=rf"127\.0\.0\.1:{port}.*--mqtt-port"):
            await EmbeddedBroker(port=port).start()
    broker = EmbeddedBroker(port=port)
    await broker.start()
    await broker.stop()
    again = EmbeddedBroker(port=port)
    await again.start()  # the port was given back
    await again.stop()


async def test_retained_messages_survive_a_restart_with_a_retained_file(tmp_path, root) -> None:
    import aiomqtt

    from nodefleet.embedded.broker import EmbeddedBroker
    from nodefleet.embedded.mosquitto import free_port

    path, port = tmp_path / "retained.json", free_port()
    async with EmbeddedBroker(port=port, retained_file=path):
        async with aiomqtt.Client("127.0.0.1", port) as client:
            await client.publish(f"{root}/n/config", b"v1", qos=1, retain=True)
            await client.publish(f"{root}/n/gone", b"x", qos=1, retain=True)
            await client.publish(f"{root}/n/gone", b"", qos=1, retain=True)
    async with EmbeddedBroker(port=port, retained_file=path):
        async with aiomqtt.Client("127.0.0.1", port) as client:
            await client.subscribe(f"{root}/#", qos=1)
            async with asyncio.timeout(5):
                message = await anext(aiter(client.messages))
            assert (str(message.topic), message.payload, message.retain) == (f"{root}/n/config", b"v1", True)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(QUIET):
                    await anext(aiter(client.messages))

    path.write_text("{not json")
    async with EmbeddedBroker(port=port, retained_file=path) as broker:
        assert broker.stats()["retained"] == 0
    assert path.with_suffix(".json.bad").read_text() == "{not json", "an unreadable file is kept aside"


def test_passwords_are_kept_hashed() -> None:
    from nodefleet.embedded.amqtt_access import AccessList

    access = AccessList(users={"svc": "plain-secret"}, allow_anonymous=False)
    assert "plain-secret" not in repr(access._users)
    assert access.verify("svc", "plain-secret") and not access.verify("svc", "plain-secreT")
    assert not access.verify(None, None) and not access.verify("other", "plain-secret")


@pytest.mark.parametrize(
    ("allowed", "requested", "covered"),
    [("a/b/#", "a/b/set/#", True), ("a/b/set/#", "a/#", False), ("a/+/x", "a/b/x", True), ("a/+/x", "a/+/x", True),
     ("a/b/x", "a/+/x", False), ("#", "a/#", True), ("a/b", "a/b/#", False)],
)
def test_acl_filter_coverage(allowed: str, requested: str, covered: bool) -> None:
    from nodefleet.embedded.amqtt_access import filter_covers

    assert filter_covers(allowed, requested) is covered

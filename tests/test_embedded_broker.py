"""What the embedded broker offers beyond the MQTT contract: run-time users, limits, restarts.

The provisioner and `nodefleet up` rely on these; Mosquitto has its own
equivalents (dynamic security, persistence), so these tests run on amqtt only.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from broker_probe import QUIET, Probe, payloads
from broker_security import PREFIX, SERVICE

pytestmark = pytest.mark.timeout(30)


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
    from nodefleet.embedded import amqtt_broker as embedded
    from nodefleet.embedded import amqtt_handler

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


def test_as_nodefleet_up_runs_it_a_service_cannot_use_the_admin_topic() -> None:
    """Users with every ordinary topic (services, the operator) beside the dynamic-security admin."""
    import json

    from broker_thread import BrokerThread

    from nodefleet.contracts import Topics

    admin, service = ("provisioner", "admin-pw"), ("operator", "operator-pw")
    with BrokerThread(dynsec_admin=admin, users=dict([service]), allow_anonymous=False) as broker:
        assert Probe(broker.host, broker.port).try_connect() != 0, "anonymous clients are refused"
        assert Probe(broker.host, broker.port, username=service[0], password="wrong").try_connect() != 0
        operator = Probe(broker.host, broker.port, username=service[0], password=service[1]).connect()
        boss = Probe(broker.host, broker.port, username=admin[0], password=admin[1]).connect()
        try:
            boss.subscribe(Topics.dynsec_response())
            command = {"commands": [{"command": "createClient", "username": "intruder", "password": "pw"}]}
            operator.publish(Topics.dynsec_control(), json.dumps(command))
            assert boss.nothing_within(QUIET) == [], "the broker answered a service's dynamic-security command"
            assert Probe(broker.host, broker.port, username="intruder", password="pw").try_connect() != 0
            assert broker.call(broker.broker.stats)["publish_denied"] >= 1
            boss.publish(Topics.dynsec_control(), json.dumps(command))
            assert json.loads(boss.get().payload)["responses"][0] == {"command": "createClient"}
        finally:
            operator.close()
            boss.close()


async def test_websocket_listener_has_the_same_logins_and_acl(topics) -> None:
    """MQTT over WebSockets on the embedded broker, as `nodefleet up` secures it, with a real WebSocket client."""
    from ws_probe import check_websocket_security

    from nodefleet.embedded.broker import EmbeddedBroker
    from nodefleet.embedded.mosquitto import free_port

    ws_port = free_port()
    broker = EmbeddedBroker(port=free_port(), ws_port=ws_port, users={"operator": "op-pw"}, allow_anonymous=False,
                            dynsec_admin=("provisioner", "admin-pw"))
    async with broker:
        assert broker.ws_url == f"ws://127.0.0.1:{ws_port}/"
        # As the provisioner gives a node its login: publish its outbox, subscribe to its inbox.
        broker.set_client("porch", "node-pw", publish=topics.node_outbox("porch"),
                          subscribe=topics.node_inbox("porch"))
        await check_websocket_security(ws_port, topics=topics, operator=("operator", "op-pw"), node="porch",
                                       node_password="node-pw", other="kitchen")


async def test_a_taken_websocket_port_names_its_option() -> None:
    import socket

    from nodefleet.embedded.broker import BrokerPortInUse, EmbeddedBroker
    from nodefleet.embedded.mosquitto import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(BrokerPortInUse, match=rf"127\.0\.0\.1:{busy}.*--ws-port"):
            await EmbeddedBroker(port=free_port(), ws_port=busy).start()

"""A node's own login on both brokers (Mosquitto's dynamic security, the embedded broker's ACL): it reaches
nothing but its own topics.

Each forbidden publish and subscription is refused (SUBACK 128; the publish dropped), the victim and every
other watcher see nothing, and each attempt shows in the broker's log (Mosquitto) or its counters (embedded).
Wrong passwords, unknown users and anonymous clients are refused at CONNECT.  A home's operator login reaches
its home's nodes and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from provisioner.conftest import ADMIN, running
from provisioner.helpers import node_client, watching

from nodefleet import wire
from nodefleet.contracts import Command, NodeTopic, OtaTopic, Topics
from nodefleet.contracts.provisioning import PROVISIONER_SERVICE, RegisterRequest

MARK = b"intruder"
CORRELATION = "from-the-intruder"


def forbidden_publishes(topics: Topics, own: str, victim: str) -> list[str]:
    """Every topic a node must not publish to: the victim's inbox and outbox, its own inbox, the fleet."""
    victims = [*(topics.set(victim, c) for c in Command), topics.state(victim), topics.config(victim),
               topics.schedule(victim), topics.status(victim), topics.info(victim), topics.telemetry(victim),
               topics.log(victim), topics.ack(victim), *(topics.ota(victim, k) for k in OtaTopic)]
    # Its own commands, config, schedule and OTA offer and data are the services' to send.
    own_inbox = [topics.set(own, Command.SWITCH), topics.config(own), topics.schedule(own),
                 topics.ota(own, OtaTopic.OFFER), topics.ota(own, OtaTopic.DATA), topics.ota_stream("1.0.0")]
    fleet = [topics.request(PROVISIONER_SERVICE, "register"), topics.errors(), topics.reply("cli-1"),
             topics.service_status(PROVISIONER_SERVICE, "main"), Topics.homie(victim, "$state"),
             f"{topics.root}/elsewhere"]
    return victims + own_inbox + fleet


def forbidden_subscriptions(topics: Topics, victim: str) -> list[str]:
    return ["#", f"{topics.root}/#", f"{topics.root}/+/config", topics.prefix(victim) + "/#",
            topics.config(victim), topics.set(victim, Command.SWITCH), topics.state(victim),
            topics.ota(victim, OtaTopic.OFFER), f"{topics.fleet}/#", topics.errors(), "$CONTROL/#",
            Topics.dynsec_response()]


def denials(broker) -> dict[str, int]:
    """What the broker counted as refused: the embedded broker's counters, Mosquitto's log lines."""
    if hasattr(broker, "log_file"):
        text = broker.log_file.read_text(errors="replace")
        return {"publish_denied": text.count("Denied PUBLISH from"), "connect_refused": text.count("not authorised")}
    return {key: broker.call(broker.broker.stats).get(key, 0) for key in ("publish_denied", "subscribe_denied",
                                                                          "connect_refused")}


async def test_a_node_login_reaches_nothing_but_its_own(guarded_broker, database, topics: Topics):
    async with running(guarded_broker, database, topics) as service:
        registrations = service.registry.registrations
        intruder = (await registrations.register(RegisterRequest(home_id="home", device_name="Intruder"))).mqtt_config
        victim = (await registrations.register(RegisterRequest(home_id="home", device_name="Victim"))).mqtt_config
        own, other = intruder.node_name, victim.node_name
        publishes = forbidden_publishes(topics, own, other)
        subscriptions = forbidden_subscriptions(topics, other)
        before = denials(guarded_broker)
        async with watching(guarded_broker, "#", Topics.dynsec_response()) as watcher, \
                node_client(guarded_broker, victim.username, victim.password) as target:
            for topic_filter in topics.node_inbox(other):
                await target.subscribe(topic_filter, qos=1)
            seen_by_victim: list[str] = []

            async def collect() -> None:
                async for message in target.messages:
                    seen_by_victim.append(str(message.topic))

            collector = asyncio.create_task(collect())
            async with node_client(guarded_broker, intruder.username, intruder.password) as client:
                for topic_filter in subscriptions:
                    assert await client.subscribe(topic_filter, qos=1) == [128], topic_filter
                for topic in publishes:
                    await client.publish(topic, MARK, qos=1)
                    await client.publish(topic, MARK, qos=1, retain=True)
                # The dynamic-security API: an intruder's client "evil" with every right.
                evil = f"evil-{uuid.uuid4().hex[:6]}"
                command = {"commands": [{"command": "createClient", "username": evil, "password": "pw",
                                         "roles": [{"rolename": "admin"}], "correlationData": CORRELATION}]}
                await client.publish(Topics.dynsec_control(), json.dumps(command), qos=1)
                # Still connected, and its own topics still work: the refusals cost the intruder nothing else.
                await client.publish(topics.state(own), b'{"probe": 1}', qos=1)
                await watcher.wait(topics.state(own))
                await asyncio.sleep(0.5)
            collector.cancel()
            leaked = [(t, p) for t, p, _ in watcher.messages if p == MARK or CORRELATION.encode() in p]
            assert leaked == [] and seen_by_victim == [], (leaked, seen_by_victim, watcher.messages[-5:])
        with pytest.raises(wire.BrokerRefused):
            async with node_client(guarded_broker, evil, "pw"):
                pass
        # A later subscriber (the services, the victim after a reboot) finds nothing retained from the intruder.
        async with watching(guarded_broker, f"{topics.root}/#", f"{topics.fleet}/#") as late:
            await asyncio.sleep(0.5)
            assert [t for t, p, _ in late.messages if p == MARK] == []
        after = denials(guarded_broker)
        attempts = 2 * len(publishes) + 1
        assert after["publish_denied"] - before["publish_denied"] >= attempts, (before, after)
        if "subscribe_denied" in after:
            assert after["subscribe_denied"] - before["subscribe_denied"] == len(subscriptions)


async def test_wrong_passwords_unknown_users_and_anonymous_clients_are_refused(guarded_broker, database,
                                                                                topics: Topics):
    async with running(guarded_broker, database, topics) as service:
        node = (await service.registry.registrations.register(
            RegisterRequest(home_id="home", device_name="Heater"))).mqtt_config
        before = denials(guarded_broker)
        logins = [(node.username, node.password + "x"), (node.username, ""), ("nobody", node.password),
                  (ADMIN[0], "guess"), (None, None)]
        for username, password in logins:
            address = wire.BrokerAddress(guarded_broker.host, guarded_broker.port, username, password)
            with pytest.raises(wire.BrokerRefused):
                async with wire.Client(address, client_id=f"probe-{uuid.uuid4().hex[:6]}"):
                    pass
        after = denials(guarded_broker)
        assert after["connect_refused"] - before["connect_refused"] == len(logins), (before, after)
        async with node_client(guarded_broker, node.username, node.password) as client:
            await client.publish(topics.state(node.node_name), b"{}", qos=1)


async def _inbox_of(broker, topics: Topics, config) -> tuple[wire.Client, list[tuple[str, bytes]]]:
    """A node's own session subscribed to its inbox, and what reaches it."""
    client = node_client(broker, config.username, config.password)
    await client.__aenter__()
    for topic_filter in topics.node_inbox(config.node_name):
        await client.subscribe(topic_filter, qos=1)
    seen: list[tuple[str, bytes]] = []

    async def collect() -> None:
        async for message in client.messages:
            seen.append((str(message.topic), message.payload))

    client.collector = asyncio.create_task(collect())  # type: ignore[attr-defined]
    return client, seen


async def test_a_home_login_reaches_only_the_nodes_of_its_home(guarded_broker, database, topics: Topics):
    """The operator login of one home, on both brokers: it reads and commands that home's nodes (one registered
    before the login was made, one after), nothing of the other home and nothing of the fleet; a removed node
    drops out of its reach, and a new login takes the old password's place."""
    async with running(guarded_broker, database, topics) as service:
        registry = service.registry
        for home in ("flat-a", "flat-b"):
            await registry.registrations.put_home(home, "UTC")
        register = registry.registrations.register
        early = (await register(RegisterRequest(home_id="flat-a", device_name="Purifier"))).mqtt_config
        other = (await register(RegisterRequest(home_id="flat-b", device_name="Heater"))).mqtt_config
        login = await registry.home_logins.issue("flat-a")
        late = (await register(RegisterRequest(home_id="flat-a", device_name="Lamp"))).mqtt_config
        assert login.username == "home.flat-a" and login.nodes == [early.node_name]
        a1, a2, b1 = early.node_name, late.node_name, other.node_name

        allowed_subscriptions = [f for n in (a1, a2) for f in topics.operator_subscribe(n)] + [
            topics.state(a1), Topics.homie(a2, "relay", "power")]
        forbidden_subscriptions = ["#", f"{topics.root}/#", topics.all_nodes(NodeTopic.STATE), topics.prefix(b1) + "/#",
                                   topics.state(b1), Topics.homie_device(b1), f"{topics.fleet}/#", "$CONTROL/#",
                                   Topics.dynsec_response(), "homeassistant/#"]
        allowed = [topics.set(a1, Command.SWITCH), topics.schedule(a1), topics.set(a2, Command.SWITCH)]
        forbidden = [topics.set(b1, Command.SWITCH), topics.schedule(b1), topics.config(b1), topics.config(a1),
                     topics.state(a1), topics.ota(a1, OtaTopic.OFFER), topics.ota(a1, OtaTopic.DATA),
                     topics.ota_stream("1.0.0"), topics.request(PROVISIONER_SERVICE, "register"),
                     topics.request(PROVISIONER_SERVICE, "home_login"), topics.errors(), Topics.homie(b1, "relay",
                                                                                                       "power", "set")]
        before = denials(guarded_broker)
        node_a1, seen_a1 = await _inbox_of(guarded_broker, topics, early)
        node_a2, seen_a2 = await _inbox_of(guarded_broker, topics, late)
        node_b1, seen_b1 = await _inbox_of(guarded_broker, topics, other)
        try:
            async with watching(guarded_broker, "#") as watcher, \
                    node_client(guarded_broker, login.username, login.password) as operator:
                for topic_filter in allowed_subscriptions:
                    assert await operator.subscribe(topic_filter, qos=1) == [1], topic_filter
                for topic_filter in forbidden_subscriptions:
                    assert await operator.subscribe(topic_filter, qos=1) == [128], topic_filter
                for topic in allowed + forbidden:
                    await operator.publish(topic, MARK, qos=1)
                # It reads what its node says (its subscription above), and the node got its commands.
                async with node_client(guarded_broker, early.username, early.password) as speaker:
                    await speaker.publish(topics.state(a1), b'{"relay": true}', qos=1)
                async with asyncio.timeout(10):
                    async for message in operator.messages:
                        if str(message.topic) == topics.state(a1) and message.payload == b'{"relay": true}':
                            break
                await watcher.wait(topics.set(a2, Command.SWITCH), lambda p: p == MARK)
                await asyncio.sleep(0.5)
            assert sorted(t for t, p in seen_a1 if p == MARK) == sorted([topics.set(a1, Command.SWITCH),
                                                                         topics.schedule(a1)])
            assert [t for t, p in seen_a2 if p == MARK] == [topics.set(a2, Command.SWITCH)]
            assert seen_b1 == []
            leaked = sorted({t for t, p, _ in watcher.messages if p == MARK} - set(allowed))
            assert leaked == [], leaked
        finally:
            for client in (node_a1, node_a2, node_b1):
                client.collector.cancel()  # type: ignore[attr-defined]
                await client.__aexit__(None, None, None)
        after = denials(guarded_broker)
        assert after["publish_denied"] - before["publish_denied"] >= len(forbidden), (before, after)
        if "subscribe_denied" in after:
            assert after["subscribe_denied"] - before["subscribe_denied"] == len(forbidden_subscriptions)

        # A removed node leaves the login's reach; the other node of the home stays in it.
        await registry.removal.remove(a1)
        async with node_client(guarded_broker, login.username, login.password) as operator:
            assert await operator.subscribe(topics.prefix(a1) + "/#", qos=1) == [128]
            assert await operator.subscribe(topics.prefix(a2) + "/#", qos=1) == [1]

        # Made again: a new password, the old one refused; what it reaches rebuilt from the registry.
        renewed = await registry.home_logins.issue("flat-a")
        assert renewed.nodes == [a2] and renewed.password != login.password
        with pytest.raises(wire.BrokerRefused):
            async with node_client(guarded_broker, login.username, login.password):
                pass
        async with node_client(guarded_broker, renewed.username, renewed.password) as operator:
            assert await operator.subscribe(topics.prefix(a2) + "/#", qos=1) == [1]
            assert await operator.subscribe(topics.prefix(a1) + "/#", qos=1) == [128]
        # The other home has no login until one is made.
        with pytest.raises(wire.BrokerRefused):
            async with node_client(guarded_broker, "home.flat-b", renewed.password):
                pass

"""A node's own login on both brokers (Mosquitto's dynamic security, the embedded broker's ACL): it reaches
nothing but its own topics.

Each forbidden publish and subscription is refused (SUBACK 128; the publish dropped), the victim and every
other watcher see nothing, and each attempt shows in the broker's log (Mosquitto) or its counters (embedded).
Wrong passwords, unknown users and anonymous clients are refused at CONNECT.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from provisioner.conftest import ADMIN, running
from provisioner.helpers import node_client, watching

from nodefleet import wire
from nodefleet.contracts import Command, OtaTopic, Topics
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

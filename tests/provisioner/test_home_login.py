"""`nodefleet device home-login`: a home's operator login from the command line, its refusal on an open broker,
and a registration that cannot give the home's login the new node (the registration is taken back whole).

What the login reaches and what it is refused, on both brokers: tests/reliability/test_security_matrix.py.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

from nodefleet import wire
from nodefleet.cli import main
from nodefleet.contracts import Command
from nodefleet.contracts.provisioning import RegisterRequest
from services.provisioner.credentials import CredentialError

from .conftest import admin_url, running
from .helpers import node_client


def _fleet(broker, topics) -> list[str]:
    return ["--broker", admin_url(broker), "--topic-root", topics.root, "--fleet-root", topics.fleet]


async def _cli(*args: str) -> tuple[int, str]:
    result = await asyncio.to_thread(CliRunner().invoke, main, list(args))
    return result.exit_code, result.output


async def test_the_command_makes_a_login_that_logs_in_and_names_its_nodes(service, dynsec_mosquitto, topics):
    await service.registry.registrations.put_home("cabin", "Europe/Oslo")
    node = (await service.registry.registrations.register(
        RegisterRequest(home_id="cabin", device_name="Sauna"))).mqtt_config

    code, out = await _cli("device", "home-login", "cabin", *_fleet(dynsec_mosquitto, topics))
    assert code == 0, out
    assert "home cabin: operator login home.cabin" in out and f"reaches 1 node(s) now: {node.node_name}" in out
    assert f"send {topics.set(node.node_name, Command.SWITCH).rsplit('/', 1)[0]}/#" in out
    code, out = await _cli("device", "home-login", "cabin", "--json", *_fleet(dynsec_mosquitto, topics))
    answer = json.loads(out)
    assert (answer["username"], answer["nodes"]) == ("home.cabin", [node.node_name])
    async with node_client(dynsec_mosquitto, answer["username"], answer["password"]) as operator:
        assert await operator.subscribe(topics.state(node.node_name), qos=1) == [1]

    code, out = await _cli("device", "home-login", "nowhere", *_fleet(dynsec_mosquitto, topics))
    assert code == 1 and "unknown home 'nowhere': create it first" in out, out


async def test_an_open_broker_gets_no_home_login_and_says_why(mosquitto, database, topics):
    async with running(mosquitto, database, topics, credentials="none",
                       mqtt_url=f"mqtt://{mosquitto.host}:{mosquitto.port}"):
        code, out = await _cli("device", "home-login", "home", "--broker",
                               f"mqtt://{mosquitto.host}:{mosquitto.port}", "--topic-root", topics.root,
                               "--fleet-root", topics.fleet)
    assert code == 1, out
    assert "NODEFLEET_PROVISIONER_CREDENTIALS=none" in out and "set NODEFLEET_PROVISIONER_CREDENTIALS=dynsec" in out


async def test_a_registration_the_home_login_cannot_take_is_taken_back_whole(dynsec_broker, database, topics,
                                                                           monkeypatch):
    async with running(dynsec_broker, database, topics) as service:
        registry = service.registry
        await registry.registrations.put_home("loft", "UTC")
        await registry.home_logins.issue("loft")
        credentials = registry.home_logins.credentials
        given: list[tuple[str, str]] = []
        add = credentials.add

        async def recorded_add(username, password, **rights):
            given.append((username, password))
            await add(username, password, **rights)

        async def refuse(username, **rights):
            raise CredentialError("the broker refused addRoleACL: injected")

        monkeypatch.setattr(credentials, "add", recorded_add)
        monkeypatch.setattr(credentials, "grant", refuse)
        with pytest.raises(CredentialError, match="injected"):
            await registry.registrations.register(RegisterRequest(home_id="loft", device_name="Fan"))
        # Neither the row nor the node's own login is left: the name is free and nothing can log in with it.
        assert [row["device_name"] for row in await registry.store.list(home_id="loft", status=None)] == []
        assert len(given) == 1
        with pytest.raises(wire.BrokerRefused):
            async with node_client(dynsec_broker, *given[0]):
                pass
        monkeypatch.undo()
        again = (await registry.registrations.register(RegisterRequest(home_id="loft", device_name="Fan"))).mqtt_config
        async with node_client(dynsec_broker, again.username, again.password) as client:
            await client.publish(topics.state(again.node_name), b"{}", qos=1)

"""Real parts for every test: Mosquitto, the embedded amqtt, PostgreSQL.

Brokers and the database start once per session on free loopback ports; each
test gets its own topic roots (and, where it asks, its own database), so
tests never see each other's messages or rows.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import broker_security
import pytest
from broker_thread import BrokerThread

from nodefleet.contracts import Topics
from nodefleet.embedded.mosquitto import Mosquitto, free_port
from nodefleet.embedded.postgres import EmbeddedPostgres


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    with Mosquitto() as broker:
        yield broker


@pytest.fixture(scope="session")
def amqtt_broker() -> Iterator[BrokerThread]:
    """The embedded amqtt broker (our embedding of it), open to anonymous clients."""
    with BrokerThread() as broker:
        yield broker


@pytest.fixture(params=["mosquitto", "amqtt"])
def broker(request: pytest.FixtureRequest):
    """Each broker in turn: a test using this runs once against Mosquitto, once against amqtt."""
    return request.getfixturevalue("mosquitto" if request.param == "mosquitto" else "amqtt_broker")


@pytest.fixture(scope="session")
def secured_mosquitto() -> Iterator[Mosquitto]:
    """Mosquitto with passwords and the topic ACL of tests/broker_security.py."""
    with Mosquitto(extra_config=broker_security.mosquitto_config()) as broker:
        yield broker


@pytest.fixture(scope="session")
def secured_amqtt() -> Iterator[BrokerThread]:
    """The embedded amqtt with the same users and ACL as secured_mosquitto."""
    with BrokerThread(users=broker_security.users(), acl=broker_security.acl(), allow_anonymous=False) as broker:
        yield broker


@pytest.fixture(params=["mosquitto", "amqtt"])
def secured_broker(request: pytest.FixtureRequest):
    return request.getfixturevalue(f"secured_{request.param}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="nodefleet-pg-")) / "data",
        port=free_port(), password=secrets.token_urlsafe(16),
        # Tests do not need crash durability of the database itself; this saves seconds.
        settings={"fsync": "off", "full_page_writes": "off"},
    )
    server.start()
    yield server
    server.stop("immediate")


@pytest.fixture
def private_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of the test's own, with a database ``nodefleet``: stopping it (an outage) disturbs no other test."""
    server = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="nodefleet-pg-outage-")) / "data", port=free_port(),
        password=secrets.token_urlsafe(16), settings={"fsync": "off", "full_page_writes": "off"},
    )
    server.start()
    server.create_database("nodefleet")
    yield server
    server.stop("immediate")


@pytest.fixture
def topics() -> Topics:
    tag = uuid.uuid4().hex[:8]
    return Topics(root=f"t{tag}/home", fleet=f"t{tag}/fleet")


@pytest.fixture
def root(topics: Topics) -> str:
    """A node topic root no other test uses."""
    return topics.root


@pytest.fixture
async def database(postgres: EmbeddedPostgres) -> AsyncIterator[str]:
    """A fresh, empty database for one test; its DSN."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres.dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield postgres.dsn(name)
    admin = await asyncpg.connect(postgres.dsn())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    """Poll an async or sync predicate until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)

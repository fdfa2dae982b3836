"""Brokers with dynamic security (Mosquitto's plugin, the embedded broker's own) and a running provisioner."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker_thread import BrokerThread

from nodefleet.contracts import Topics
from nodefleet.embedded.dynsec import mosquitto_dynsec_config
from nodefleet.embedded.mosquitto import Mosquitto
from services.provisioner.app import Service, serve
from services.provisioner.settings import ProvisionerSettings

ADMIN = ("provisioner", "provisioner-pw")
SERVICE = ("telemetry", "telemetry-pw")


@pytest.fixture(scope="session")
def dynsec_mosquitto() -> Iterator[Mosquitto]:
    folder = Path(tempfile.mkdtemp(prefix="nodefleet-dynsec-"))
    with Mosquitto(extra_config=mosquitto_dynsec_config(folder, admin=ADMIN[0], password=ADMIN[1],
                                                             services=dict([SERVICE]))) as broker:
        yield broker


@pytest.fixture(scope="session")
def dynsec_amqtt() -> Iterator[BrokerThread]:
    with BrokerThread(dynsec_admin=ADMIN, allow_anonymous=False) as broker:
        yield broker


@pytest.fixture(params=["mosquitto", "amqtt"])
def dynsec_broker(request: pytest.FixtureRequest):
    """Each broker with dynamic security in turn."""
    return request.getfixturevalue(f"dynsec_{request.param}")


def admin_url(broker: Any) -> str:
    return f"mqtt://{ADMIN[0]}:{ADMIN[1]}@{broker.host}:{broker.port}"


@contextlib.asynccontextmanager
async def running(broker: Any, database: str, topics: Topics, **overrides: Any) -> AsyncIterator[Service]:
    """A provisioner serving ``broker`` (with its dynamic security) until the block ends."""
    options: dict[str, Any] = {
        "mqtt_url": admin_url(broker), "database_url": database, "topic_root": topics.root,
        "fleet_root": topics.fleet, "credentials": "dynsec", "http_port": 0, "default_tz": "Europe/Berlin",
        "instance": "test", **overrides,
    }
    settings = ProvisionerSettings(**options)
    started: asyncio.Future[Service] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, started=started))
    try:
        done, _ = await asyncio.wait([task, started], timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        if not started.done():
            raise AssertionError("the provisioner did not start within 20 s")
        yield started.result()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def provisioner(dynsec_broker, database: str, topics: Topics) -> AsyncIterator[Service]:
    async with running(dynsec_broker, database, topics) as service:
        yield service


@pytest.fixture
async def service(dynsec_mosquitto, database: str, topics: Topics) -> AsyncIterator[Service]:
    """A provisioner on Mosquitto only, for what does not depend on the broker."""
    async with running(dynsec_mosquitto, database, topics) as running_service:
        yield running_service

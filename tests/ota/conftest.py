"""Fixtures of the ota service tests: releases, the service on a real broker and PostgreSQL, test peers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodefleet.contracts.ota import OTA_SERVICE, device_key
from nodefleet.errors import RequestError
from nodefleet.fleet import Requester, replies_to
from nodefleet.ota_release import Release, build, encode
from nodefleet.sim import FIRMWARE_DIR
from nodefleet.wire import BrokerAddress, Client
from services.ota.app import OtaService, open_store
from services.ota.settings import OtaSettings

from .peer import Peer, ProvisionerStub

MASTER = bytes(range(32))
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def release_140() -> Release:
    # 1 KiB blocks: about 40 blocks, enough to catch a download half done.
    return build(FIRMWARE_DIR, version="1.4.0", block_size=1024)


@pytest.fixture(scope="session")
def release_150() -> Release:
    return build(FIRMWARE_DIR, version="1.5.0", block_size=1024)


def release_file(release: Release) -> bytes:
    return encode(release)


class Operator:
    """A fleet requester on its own connection: what the CLI does, in-test."""

    def __init__(self, client: Client, requester: Requester) -> None:
        self.client, self.requester = client, requester

    async def __call__(self, action: str, data: dict | None = None, *, timeout: float = 10.0):
        return await self.requester.request(OTA_SERVICE, action, data or {}, timeout=timeout)


@contextlib.asynccontextmanager
async def operator(url: str, topics) -> AsyncIterator[Operator]:
    client_id = f"op-{uuid.uuid4().hex[:8]}"
    async with (Client(BrokerAddress.parse(url), client_id=client_id) as client,
                replies_to(client, topics, client_id=client_id) as requester):
        yield Operator(client, requester)


def settings_for(broker_url: str, database: str, topics, **extra) -> OtaSettings:
    values = {"mqtt_url": broker_url, "database_url": database, "topic_root": topics.root,
              "fleet_root": topics.fleet, "instance": f"ota-{uuid.uuid4().hex[:6]}",
              "client_id": f"ota-{uuid.uuid4().hex[:6]}", "ota_master_key": MASTER.hex(), "tick_interval": 0.2, "gather": 0.3}
    values.update(extra)
    return OtaSettings(**values)


@contextlib.asynccontextmanager
async def running(settings: OtaSettings) -> AsyncIterator[OtaService]:
    """The service in this process until the block ends (its counters and engine at hand)."""
    service = OtaService(settings, await open_store(settings))
    ready = asyncio.Event()
    task = asyncio.create_task(service.serve(ready=ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        waiter.cancel()
        task.cancel()
        raise AssertionError(f"the ota service did not start: {task.exception() if task.done() else 'timeout'}")
    try:
        yield service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def fleet(url: str, topics, names: list[str], *, homes: dict[str, str] | None = None,
                peers: list[str] | None = None, **peer_options) -> AsyncIterator[dict[str, Peer]]:
    """A provisioner stand-in knowing ``names`` and a running test peer for each of ``peers`` (default: all)."""
    stub = ProvisionerStub(url=url, topics=topics, nodes={n: (homes or {}).get(n, "home1") for n in names})
    options: dict[str, dict] = peer_options.pop("per_node", {})
    made = {n: Peer(n, url=url, topics=topics, key=device_key(MASTER, n), **{**peer_options, **options.get(n, {})})
            for n in (names if peers is None else peers)}
    tasks = [asyncio.create_task(stub.run())] + [asyncio.create_task(p.run()) for p in made.values()]
    await asyncio.sleep(0.3)  # every peer and the stub subscribed
    try:
        yield made
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)



async def service_process(broker_url: str, topics, database: str, log: Path,
                          instance: str = "ota-k") -> asyncio.subprocess.Process:
    """``python -m services.ota`` as its own process (as in a container), its JSON log appended to ``log``."""
    env = {**os.environ, "NODEFLEET_MQTT_URL": broker_url, "NODEFLEET_DATABASE_URL": database,
           "NODEFLEET_TOPIC_ROOT": topics.root, "NODEFLEET_FLEET_ROOT": topics.fleet, "NODEFLEET_INSTANCE": instance,
           "NODEFLEET_OTA_LEADER_POLL": "0.3",
           "NODEFLEET_OTA_MASTER_KEY": MASTER.hex(), "NODEFLEET_OTA_GATHER": "0.3",
           "NODEFLEET_OTA_TICK_INTERVAL": "0.2", "NODEFLEET_LOG_FORMAT": "json"}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "services.ota", cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=log.open("a"))


async def stop_process(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
        await asyncio.wait_for(process.wait(), 10)


async def answers(op: Operator) -> bool:
    """Whether an active ota service answers a request now."""
    try:
        await op("releases", timeout=1.0)
    except RequestError:
        return False
    return True

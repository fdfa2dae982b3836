"""The provisioner's PostgreSQL stopped for 20 s and started again: requests meanwhile are answered "database unavailable,
try again" (not an internal error), and the same instance serves again once it is back."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from nodefleet.contracts.provisioning import PROVISIONER_SERVICE
from nodefleet.errors import RequestError
from nodefleet.fleet import replies_to

from .conftest import ADMIN, running
from .helpers import node_client

pytestmark = pytest.mark.timeout(120)


async def test_requests_while_the_database_is_down_are_told_to_try_again(dynsec_mosquitto, private_postgres, topics):
    database = private_postgres.dsn("nodefleet")
    async with running(dynsec_mosquitto, database, topics) as service, \
            node_client(dynsec_mosquitto, *ADMIN) as client, \
            replies_to(client, topics, client_id=f"req-{uuid.uuid4().hex[:8]}") as requests:
        before = await requests.request(PROVISIONER_SERVICE, "register", {"home_id": "home", "device_name": "RO"})
        await asyncio.to_thread(private_postgres.stop, "fast")
        stopped = asyncio.get_running_loop().time()
        try:
            for action, data in (("list", {}), ("register", {"home_id": "home", "device_name": "Lamp"})):
                with pytest.raises(RequestError, match="database unavailable") as failed:
                    await requests.request(PROVISIONER_SERVICE, action, data, timeout=15)
                assert "try again" in str(failed.value) and "internal error" not in str(failed.value)
            # Down for 20 s in all: still answered, still the same words, at the end of it.
            await asyncio.sleep(max(0.0, stopped + 20 - asyncio.get_running_loop().time()))
            with pytest.raises(RequestError, match="database unavailable"):
                await requests.request(PROVISIONER_SERVICE, "list", {}, timeout=15)
            assert service.errors.counts.get("database_unavailable", 0) >= 3
        finally:
            await asyncio.to_thread(private_postgres.start)
        # Back by itself: the same instance answers, and what was registered before is there, once.
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            try:
                rows = await requests.request(PROVISIONER_SERVICE, "list", {}, timeout=10)
                break
            except RequestError:
                assert asyncio.get_running_loop().time() < deadline, "the provisioner did not serve again"
                await asyncio.sleep(0.5)
        names = [row["device_name"] for row in rows]
        assert names.count("RO") == 1 and "Lamp" not in names, names
        assert before["mqtt_config"]["node_name"] in {row["node"] for row in rows}

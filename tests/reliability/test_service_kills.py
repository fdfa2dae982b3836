"""`kill -9` of the provisioner and of the scheduler under load, then a restart: nothing accepted lost or doubled.

Each service runs as its own process (``python -m services.<name>``, tests/telemetry/process.py), as in a
container.  Requests caught by the kill either get their answer or the requester's timeout, which says what to
check; a registration retried after a timeout is taken once.  The ota service's own kill -9 mid-rollout is
tests/ota/test_restart.py; telemetry's is tests/telemetry/test_reliability.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

import asyncpg
import pytest
from provisioner.conftest import ADMIN, SERVICE
from provisioner.helpers import come_online, node_client, watching
from telemetry.process import ServiceProcess

from nodefleet.contracts import Command, NodeTopic, Topics
from nodefleet.contracts.provisioning import PROVISIONER_SERVICE
from nodefleet.contracts.scheduling import SCHEDULER_SERVICE
from nodefleet.errors import RequestError
from nodefleet.fleet import replies_to

pytestmark = pytest.mark.timeout(120)


def service_env(broker: Any, database: str, topics: Topics, *, user: tuple[str, str] = SERVICE,
                **extra: str) -> dict[str, str]:
    """What a container of any service gets: the broker (as ``user``), the database, the test's roots."""
    return {"NODEFLEET_MQTT_URL": f"mqtt://{user[0]}:{user[1]}@{broker.host}:{broker.port}",
            "NODEFLEET_DATABASE_URL": database, "NODEFLEET_TOPIC_ROOT": topics.root,
            "NODEFLEET_FLEET_ROOT": topics.fleet, "NODEFLEET_INSTANCE": "kill", **extra}


@contextlib.asynccontextmanager
async def requester(broker: Any, topics: Topics):
    client_id = f"req-{uuid.uuid4().hex[:8]}"
    async with (node_client(broker, *ADMIN) as client, replies_to(client, topics, client_id=client_id) as r):
        yield r


class Registrations:
    """Registers devices one name after another, ``width`` in flight, until stopped; sorts the answers."""

    def __init__(self, requests, *, width: int = 8, timeout: float = 4.0) -> None:
        self.requests, self.width, self.timeout = requests, width, timeout
        self.accepted: dict[str, dict] = {}  # device name -> its answer
        self.failed: dict[str, str] = {}  # device name -> the requester's error
        self.stop = asyncio.Event()
        self._next = 0

    async def run(self) -> None:
        await asyncio.gather(*(self._lane() for _ in range(self.width)))

    async def _lane(self) -> None:
        while not self.stop.is_set():
            name = f"dev {self._next}"
            self._next += 1
            await self.one(name)

    async def one(self, name: str) -> None:
        try:
            self.accepted[name] = await self.requests.request(
                PROVISIONER_SERVICE, "register", {"home_id": "home", "device_name": name}, timeout=self.timeout)
            self.failed.pop(name, None)
        except RequestError as exc:
            self.failed[name] = str(exc)


async def test_provisioner_killed_under_registrations_and_first_onlines(guarded_broker, database, topics: Topics):
    service = ServiceProcess(service_env(guarded_broker, database, topics, user=ADMIN,
                                         NODEFLEET_PROVISIONER_CREDENTIALS="dynsec",
                                         NODEFLEET_PROVISIONER_HTTP_PORT="-1"), name="provisioner")
    service.start()
    try:
        await service.wait_ready()
        async with requester(guarded_broker, topics) as requests, \
                watching(guarded_broker, f"{topics.root}/+/config") as configs:
            # Nodes registered beforehand come online in a stream through the kill.
            early = Registrations(requests)
            for i in range(20):
                await early.one(f"node {i}")
            nodes = [answer["mqtt_config"] for answer in early.accepted.values()]
            assert len(nodes) == 20, early.failed
            load = Registrations(requests)
            registering = asyncio.create_task(load.run())

            came_online: list[float] = []

            async def first_onlines() -> None:
                for i, mqtt in enumerate(nodes):
                    async with node_client(guarded_broker, mqtt["username"], mqtt["password"]) as client:
                        await come_online(client, topics, mqtt["node_name"], f"chip-{i}")
                    came_online.append(time.monotonic())
                    await asyncio.sleep(0.1)

            onlines = asyncio.create_task(first_onlines())
            while len(load.accepted) < 20:
                await asyncio.sleep(0.02)
            service.kill()
            killed_at = time.monotonic()
            accepted_at_kill = len(load.accepted)
            await asyncio.sleep(1.0)
            service.start()
            await service.wait_ready()
            back = time.monotonic() - killed_at
            while_down = sum(killed_at <= t <= killed_at + back for t in came_online)
            while len(load.accepted) < accepted_at_kill + 20:
                await asyncio.sleep(0.02)
            load.stop.set()
            await registering
            await onlines
            timed_out = dict(load.failed)
            for name in timed_out:  # what the kill left unanswered, retried by name as the app does
                await load.one(name)
            listed = await requests.request(PROVISIONER_SERVICE, "list", {}, timeout=10)
            by_node = {row["node"]: row for row in listed}
            # Every node came online once and has its retained config.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if all(configs.payloads(topics.config(m["node_name"])) for m in nodes):
                    break
                await asyncio.sleep(0.1)
            config_counts = [len(configs.payloads(topics.config(m["node_name"]))) for m in nodes]
            config_copies = [set(configs.payloads(topics.config(m["node_name"]))) for m in nodes]
        events = service.events()
    finally:
        service.stop()
    active = [row for row in listed if row["status"] != "revoked"]
    names = [row["device_name"] for row in active]
    print(f"provisioner kill -9: {len(load.accepted)} registrations accepted ({accepted_at_kill} before the kill), "
          f"{len(timed_out)} unanswered by the kill and retried; {len(nodes)} first onlines ({while_down} while it was down); back {back:.2f} s "
          f"after the kill; configs per node {sorted(set(config_counts))}")
    assert load.failed == {}, load.failed
    assert all("no answer from the provisioner service" in why for why in timed_out.values()), timed_out
    assert sorted(names) == sorted(set(names)), "a device registered twice"
    assert set(load.accepted) | {f"node {i}" for i in range(20)} == set(names)
    for name, answer in load.accepted.items():  # the answer given is the device kept
        assert by_node[answer["mqtt_config"]["node_name"]]["device_name"] == name
    assert all(by_node[m["node_name"]]["status"] == "provisioned" for m in nodes)
    # Each node has its config: sent by whoever provisioned it, and once more by the restarted instance's first
    # look at a node not known to run it (these stand-ins never report a config in their state, as nodes do);
    # so also the node whose config the kill caught between the provisioning UPDATE and the publish.
    assert all(1 <= n <= 2 for n in config_counts), config_counts
    assert all(len(copies) == 1 for copies in config_copies), "two different configs for one node"
    assert while_down > 0, "the kill must fall among the first onlines"
    assert "Traceback" not in service.log_path.read_text()
    assert "provisioner_ready" in events


def _local_at(start: int) -> tuple[int, str]:
    """A tz offset that puts ``start`` on a whole local minute, and that minute as HH:MM."""
    offset = (-start) % 60
    local = (start + offset) % 86400
    return offset, f"{local // 3600:02d}:{local // 60 % 60:02d}"


class Changes:
    """``scheduler/set`` on a few nodes, ``width`` in flight, each change with its own id, until stopped."""

    def __init__(self, requests, nodes: list[str], *, timeout: float = 3.0) -> None:
        self.requests, self.nodes, self.timeout = requests, nodes, timeout
        self.accepted: dict[str, dict] = {}  # change id -> the schedule answered
        self.failed: dict[str, tuple[str, str, str]] = {}  # change id -> (node, rule id, the requester's error)
        self.stop = asyncio.Event()
        self._next = 0

    async def run(self) -> None:
        await asyncio.gather(*(self._lane(node) for node in self.nodes))

    async def _lane(self, node: str) -> None:
        # At most 30 rules a node (the node takes 32), spread over the 10 s the runs fall due in.
        for _ in range(30):
            if self.stop.is_set():
                return
            self._next += 1
            await self.one(node, f"r{self._next}", f"change-{self._next}")
            await asyncio.sleep(0.3)

    async def one(self, node: str, rule: str, change: str) -> None:
        body = {"node": node, "change": change, "rule": {"id": rule, "at": "23:59", "duration": 60}}
        try:
            self.accepted[change] = (await self.requests.request(SCHEDULER_SERVICE, "set", body,
                                                                 timeout=self.timeout))["schedule"]
            self.failed.pop(change, None)
        except RequestError as exc:
            self.failed[change] = (node, rule, str(exc))


async def test_scheduler_killed_with_runs_due_before_during_and_after(guarded_broker, database, topics: Topics):
    """40 nodes whose runs fall due 4 a second, schedule changes in flight on 4 others, the scheduler killed
    with SIGKILL in the middle and started again: every run backed up, each claimed once; every change that was
    answered kept, the unanswered ones answered once when retried with their change id."""
    tag = uuid.uuid4().hex[:4]
    sleepers = [f"k{i:02d}-{tag}" for i in range(40)]  # online, their clocks too far behind to run it themselves
    edited = [f"c{i}-{tag}" for i in range(4)]
    service = ServiceProcess(service_env(guarded_broker, database, topics, user=ADMIN, NODEFLEET_SCHEDULER_GRACE="1",
                                         NODEFLEET_SCHEDULER_LEASE="2"), name="scheduler")
    service.start()
    try:
        await service.wait_ready()
        async with requester(guarded_broker, topics) as requests, \
                watching(guarded_broker, topics.every_node(Command.SWITCH), topics.all_nodes(NodeTopic.SCHEDULE)) \
                as seen, node_client(guarded_broker, *ADMIN) as admin:
            base = int(time.time()) + 5
            starts = {node: base + i % 10 for i, node in enumerate(sleepers)}
            for node in [*sleepers, *edited]:
                offset, at = _local_at(starts.get(node, base))
                await admin.publish(topics.config(node), json.dumps(
                    {"v": 1, "version": 1, "tz": [{"from": 0, "offset": offset}]}), qos=1, retain=True)
                await admin.publish(topics.status(node), b"online", qos=1, retain=True)
                if node in starts:
                    await admin.publish(topics.schedule(node), json.dumps(
                        {"v": 1, "version": 1, "rules": [{"id": "water", "at": at, "duration": 60}]}), qos=1,
                        retain=True)
            changes = Changes(requests, edited)
            changing = asyncio.create_task(changes.run())

            def backed_up() -> set[str]:
                return {node for node in sleepers if seen.payloads(topics.set(node, Command.SWITCH))}

            # Killed about 4 s into the runs (1 s grace): some backed up, the rest due while it is down or after.
            await asyncio.sleep(max(0.0, base + 1 + 4 - time.time()))
            service.kill()
            killed_at, killed_wall = time.monotonic(), time.time()
            sent_before = len(backed_up())
            changes_before = len(changes.accepted)
            await asyncio.sleep(1.0)
            service.start()
            await service.wait_ready()
            back = time.monotonic() - killed_at
            deadline = time.monotonic() + 30
            while len(backed_up()) < len(sleepers) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(3.0)  # a lease and more: a claim sent twice would show now
            changes.stop.set()
            await changing
            unanswered = dict(changes.failed)
            for change, (node, rule, _) in unanswered.items():  # retried with the same change id
                await changes.one(node, rule, change)
            final = {node: json.loads(seen.payloads(topics.schedule(node))[-1]) for node in edited}
            versions = {node: [json.loads(p)["version"] for p in seen.payloads(topics.schedule(node)) if p]
                        for node in edited}
        events = service.events()
    finally:
        service.stop()
    sends = {node: [json.loads(p)["run_id"] for p in seen.payloads(topics.set(node, Command.SWITCH))]
             for node in sleepers}
    db = await asyncpg.connect(database)
    try:
        claims = await db.fetch("SELECT node, run_id, count(*) AS n FROM scheduler_events WHERE node = ANY($1)"
                                " AND kind = 'backup' GROUP BY node, run_id", sleepers)
    finally:
        await db.close()
    # At least once, by design: a command out just as the kill came, before it was marked sent, is sent again
    # after the lease under the same run id, which the node drops (tests/node/test_logic.py).
    doubled = {node: ids for node, ids in sends.items() if len(ids) > 1}
    print(f"scheduler kill -9: {len(sleepers)} runs due over 10 s, {sent_before} backed up before the kill, "
          f"back {back:.2f} s after it; {len(doubled)} sent again after the restart (out as the kill came); "
          f"{len(changes.accepted)} schedule changes answered ({changes_before} before the kill), "
          f"{len(unanswered)} unanswered by the kill and retried; "
          f"{events.count('backup_taken_over')} claims of the killed instance taken over after the lease")
    assert 0 < sent_before < len(sleepers), "the kill must fall among the runs"
    assert all(len(set(ids)) == 1 for ids in sends.values()), sends  # one run each, none lost
    # Sent twice only if its send (at due + 1 s grace) fell in the moment before the kill.
    assert all(len(ids) == 2 and killed_wall - 2 <= starts[node] + 1 <= killed_wall for node, ids in doubled.items()), \
        (doubled, {node: starts[node] + 1 - killed_wall for node in doubled})
    assert sorted((r["node"], r["n"]) for r in claims) == sorted((node, 1) for node in sleepers)
    assert changes.failed == {}, changes.failed
    assert all("no answer from the scheduler service" in why for _, _, why in unanswered.values()), unanswered
    for node in edited:  # every answered change is in the schedule now retained, once; versions one by one
        rules = [rule["id"] for rule in final[node]["rules"]]
        assert sorted(rules) == sorted(set(rules))
        assert versions[node] == list(range(versions[node][0], versions[node][0] + len(versions[node])))
    kept = {rule["id"] for node in edited for rule in final[node]["rules"]}
    answered = {rule["id"] for schedule in changes.accepted.values() for rule in schedule["rules"]}
    assert answered <= kept
    # The runs due in the 2 s after the kill were claimed ahead (claim_ahead) by the killed instance: the restarted
    # one lost those claims and took them over after the lease (all sent: above).
    assert events.count("backup_taken_over") > 0, "no reservation of the killed instance was taken over"
    assert "Traceback" not in service.log_path.read_text()
    assert events.count("scheduler_ready") == 1

"""Two scheduler instances: never a double fire; one killed with SIGKILL loses no run."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from nodefleet.contracts.scheduling import SCHEDULER_SERVICE

from .conftest import GRACE, LEASE, aligned, schedule, schedule_topic

ROOT = Path(__file__).resolve().parents[2]


async def _instance(name: str, mosquitto, topics, database: str, logs: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "NODEFLEET_MQTT_URL": mosquitto.url, "NODEFLEET_DATABASE_URL": database,
           "NODEFLEET_TOPIC_ROOT": topics.root, "NODEFLEET_FLEET_ROOT": topics.fleet, "NODEFLEET_INSTANCE": name,
           "NODEFLEET_SCHEDULER_GRACE": str(GRACE), "NODEFLEET_SCHEDULER_LEASE": str(LEASE),
           "NODEFLEET_LOG_FORMAT": "json"}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "services.scheduler", cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=(logs / f"{name}.log").open("w"))


def _run_id(rule: str, start: int, offset: int) -> str:
    return f"{rule}-{datetime.fromtimestamp(start + offset, UTC):%Y%m%d}"


async def test_two_instances_one_killed(make_node, watch, topics, mosquitto, database, tmp_path):
    instances = {name: await _instance(name, mosquitto, topics, database, tmp_path)
                 for name in ("sched-a", "sched-b")}
    try:
        for name in instances:
            await watch.wait(topics.service_status(SCHEDULER_SERVICE, name), lambda s: s == "online", timeout=20)
        start1, off1, _ = aligned(8)
        start2, off2 = start1 + 7, (off1 - 7) % 60
        start3, off3 = start1 + 14, (off1 - 14) % 60
        nodes = {}
        for name, offset in (("n1", off1), ("n2", off2), ("n3", off3)):
            nodes[name] = await make_node(name, offset=offset)
            await nodes[name].ctl(f"clock {int(time.time()) - 7200}")  # the node will not run it itself
        at = {name: f"{(s + o) % 86400 // 3600:02d}:{(s + o) % 3600 // 60:02d}"
              for name, s, o in (("n1", start1, off1), ("n2", start2, off2), ("n3", start3, off3))}
        for name in nodes:
            await watch.retain(schedule_topic(topics, name), schedule(1, {"id": "water", "at": at[name], "duration": 40}))
        runs = {"n1": _run_id("water", start1, off1), "n2": _run_id("water", start2, off2),
                "n3": _run_id("water", start3, off3)}

        # Both alive: exactly one of them sends n1's backup.
        await watch.wait(topics.state("n1"), lambda s: s.get("run_id") == runs["n1"], timeout=start1 + GRACE + 5 - time.time())
        db = await asyncpg.connect(database)
        try:
            sender = await db.fetchval("SELECT instance FROM scheduler_events WHERE node = 'n1' AND kind = 'backup'")
            # The instance that sent it dies with SIGKILL before n2's run is due.
            instances[sender].kill()
            await instances[sender].wait()
            survivor = next(name for name in instances if name != sender)
            # An instance that claimed n3's run and died before sending it (fault injected as its claim row).
            await db.execute(
                """INSERT INTO scheduler_events (node, run_id, kind, rule, action, start, "end", ts, instance)
                   VALUES ('n3', $1, 'backup', 'water', 'on', $2, $3, $4, 'sched-dead')""",
                runs["n3"], start3, start3 + 40, time.time() - 100)

            await watch.wait(topics.state("n2"), lambda s: s.get("run_id") == runs["n2"],
                             timeout=start2 + GRACE + 5 - time.time())
            await watch.wait(topics.state("n3"), lambda s: s.get("run_id") == runs["n3"],
                             timeout=start3 + GRACE + LEASE + 5 - time.time())
            await asyncio.sleep(LEASE + 1)
            for name in nodes:
                assert len(watch.switches(name, runs[name])) == 1, name
            rows = {r["node"]: r for r in await db.fetch("SELECT * FROM scheduler_events WHERE kind = 'backup'")}
            assert rows["n2"]["instance"] == survivor and rows["n3"]["instance"] == survivor
            assert all(row["sent"] is not None for row in rows.values())
        finally:
            await db.close()
        # n3's command went out after the lease: the dead claim was taken over.
        [(sent3, _, _)] = [m for m in watch.messages if m[1] == f"{topics.prefix('n3')}/set/switch"]
        assert start3 + GRACE + LEASE - 0.5 <= sent3 < start3 + GRACE + 2 * LEASE + 1
    finally:
        for process in instances.values():
            if process.returncode is None:
                process.terminate()
                await process.wait()

"""Several simulated nodes against one broker: the library API and the `nodefleet sim` command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys

from nodefleet.contracts import Topics
from nodefleet.contracts.topics import NodeTopic
from nodefleet.sim import SimFleet

from .conftest import watching


async def test_sim_fleet_comes_online_sends_telemetry_and_stops(mosquitto, topics, tmp_path):
    fleet = SimFleet(mqtt_url=mosquitto.url, count=4, topics=topics, telemetry_period=1, workdir=tmp_path)
    names = [n.name for n in fleet.nodes]
    async with watching(mosquitto, Topics(root=topics.root.rsplit("/", 1)[0], fleet=topics.fleet), "home") as watch:
        async with fleet:
            for name in names:
                await watch.wait(name + "/telemetry", timeout=20)
                await watch.wait(name + "/status", lambda s: s == "online")
            assert fleet.alive() == 4
        for name in names:
            await watch.wait(name + "/status", lambda s: s == "offline", timeout=10)
        assert not watch.invalid, watch.invalid
    assert fleet.alive() == 0


async def test_sim_command_runs_nodes_until_its_duration(mosquitto, topics, tmp_path):
    command = shutil.which("nodefleet")
    args = [command] if command else [sys.executable, "-c", "from nodefleet.cli import main; main()"]
    async with watching(mosquitto, Topics(root=topics.root.rsplit("/", 1)[0], fleet=topics.fleet), "home") as watch:
        process = await asyncio.create_subprocess_exec(
            *args, "sim", "--nodes", "2", "--duration", "6", "--broker", mosquitto.url, "--topic-root", topics.root,
            "--workdir", str(tmp_path), env={**os.environ, "NO_COLOR": "1"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            for i in range(2):
                await watch.wait(f"sim-{i:03d}/{NodeTopic.STATE.value}", timeout=15)
            output, _ = await asyncio.wait_for(process.communicate(), 20)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert not watch.invalid, watch.invalid
    assert process.returncode == 0, output.decode()
    assert b"2 simulated nodes running" in output


async def test_run_demo_is_ready_with_its_nodes_and_stops_them_when_cancelled(mosquitto, topics):
    from nodefleet.sim import run_demo

    ready = asyncio.Event()
    async with watching(mosquitto, Topics(root=topics.root.rsplit("/", 1)[0], fleet=topics.fleet), "home") as watch:
        task = asyncio.create_task(run_demo(count=2, mqtt_url=mosquitto.url, ready=ready, topic_root=topics.root))
        await asyncio.wait_for(ready.wait(), 15)
        for i in range(2):
            await watch.wait(f"demo-{i:03d}/status", lambda s: s == "online", timeout=15)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for i in range(2):
            await watch.wait(f"demo-{i:03d}/status", lambda s: s == "offline", timeout=10)


async def _run_demo_once(mosquitto, topics, store, watch, *, telemetry: int) -> list[dict]:
    """One ``up --demo 1`` lifetime: start, wait for ``telemetry`` messages, stop; their payloads."""
    import time

    from nodefleet.sim import run_demo

    ready = asyncio.Event()
    mark = watch.mark()
    task = asyncio.create_task(run_demo(count=1, mqtt_url=mosquitto.url, ready=ready, topic_root=topics.root,
                                        store=store))
    try:
        await asyncio.wait_for(ready.wait(), 15)
        started = time.monotonic()
        await watch.wait("demo-000/status", lambda s: s == "online", since=mark, timeout=15)
        while len(watch.found("demo-000/telemetry", since=mark)) < telemetry:
            await watch.wait("demo-000/telemetry", since=watch.mark(), timeout=10)
        took = time.monotonic() - started
        seen = watch.found("demo-000/telemetry", since=mark)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await watch.wait("demo-000/status", lambda s: s == "offline", since=mark, timeout=10)
    # Telemetry within seconds, even under the provisioner's 60 s config: the first once online, then every 5 s.
    assert took < 4 + 6 * (telemetry - 1), took
    return seen


async def test_demo_nodes_keep_their_flash_and_show_telemetry_within_seconds(mosquitto, topics, tmp_path):
    root = Topics(root=topics.root.rsplit("/", 1)[0], fleet=topics.fleet)
    store = tmp_path / "data" / "demo-nodes.json"
    async with watching(mosquitto, root, "home") as watch:
        # What the provisioner retains for a node: the default 60 s period.
        await watch.client.publish(topics.config("demo-000"), '{"v": 1, "version": 2, "telemetry_period": 60}',
                                   qos=1, retain=True)
        first = await _run_demo_once(mosquitto, topics, store, watch, telemetry=2)
        assert (tmp_path / "data" / "demo-nodes" / "demo-000" / "seq.json").exists()
        again = await _run_demo_once(mosquitto, topics, store, watch, telemetry=1)
        assert min(t["seq"] for t in again) > max(t["seq"] for t in first)
        await watch.client.publish(topics.config("demo-000"), b"", qos=1, retain=True)
        assert not watch.invalid, watch.invalid

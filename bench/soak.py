"""Soak: ``python -m bench.soak [--quick | --minutes N] [--rate 5000] [--kill telemetry|scheduler]``.

Mosquitto, an embedded PostgreSQL, the telemetry service and the scheduler,
each its own process as deployed, under a steady load for the given time:

- telemetry from simulated nodes at ``--rate`` msg/s, QoS 1 (the lean load
  generator of bench.telemetry_ingest, two processes);
- commands: a ``set/switch`` at QoS 1 to one of those nodes ten times a
  second (nobody answers them: they load the broker's routing);
- schedule changes: a ``scheduler/set`` request twice a second, each
  answered by the scheduler (its PostgreSQL transaction and the retained
  schedule it publishes).

Halfway, one service (``--kill``, default telemetry) is killed with SIGKILL
and started again two seconds later; its persistent session at the broker
holds what was published meanwhile.  At the end every row is counted in
PostgreSQL: ``lost`` is telemetry published and acknowledged by the broker
but never stored, ``duplicated`` rows stored twice (by node and seq).
``p99_ms`` is publish-to-commit latency of the telemetry published outside
the outage (before the kill, and from ten seconds after the restart on);
the details give it over all rows too.  RSS of each process is sampled
every second; ``rss_growth_pct`` is the largest growth of any process
within a steady window: from the end of the warm-up (a fifth of the run,
at least 30 s)
to the kill, and from ten seconds after the restart to the end (what the
broker queues for the dead service is the outage's high-water mark).  The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from nodefleet import wire
from nodefleet.contracts import Command, Topics
from nodefleet.contracts.scheduling import SCHEDULER_SERVICE
from nodefleet.embedded.mosquitto import Mosquitto, free_port
from nodefleet.embedded.postgres import EmbeddedPostgres
from nodefleet.fleet import RequestError, replies_to
from nodefleet.processes import stop_process

from .telemetry_ingest import Service, run_load, wait_rows

ROOT = Path(__file__).resolve().parents[1]
PUBLISHERS = 2
NODES = 200
COMMANDS_PER_S = 10
CHANGES_PER_S = 2
DOWN_S = 2.0  # the killed service stays down this long
SETTLE_S = 10.0  # after a restart: its warm-up, and the end of the outage for p99
WARM_S = 30.0  # at least: the broker's RSS settles within about 30 s at 5,000 msg/s (measured over 3 minutes)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Scheduler:
    """``python -m services.scheduler`` as its own process."""

    def __init__(self, broker: Mosquitto, database: str, topics: Topics, log_path: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NODEFLEET_MQTT_URL": broker.url,
               "NODEFLEET_DATABASE_URL": database, "NODEFLEET_TOPIC_ROOT": topics.root,
               "NODEFLEET_FLEET_ROOT": topics.fleet, "NODEFLEET_INSTANCE": "soak", "NODEFLEET_LOG_FORMAT": "json"}
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "services.scheduler"], env=env, cwd=ROOT,
                                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while b"scheduler_ready" not in self.log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the scheduler did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.process)


class Rss:
    """RSS samples per process label (a restarted process goes on in the same series)."""

    def __init__(self) -> None:
        self.series: dict[str, list[tuple[float, float]]] = {}

    def sample(self, pids: dict[str, int]) -> None:
        now = time.monotonic()
        for label, pid in pids.items():
            if (mb := rss_mb(pid)) is not None:
                self.series.setdefault(label, []).append((now, mb))

    def figures(self, windows: list[tuple[float, float]]) -> dict[str, dict[str, Any]]:
        """Per process: RSS at the start and end of each steady window, and the largest growth in one."""
        out: dict[str, dict[str, Any]] = {}
        for label, samples in self.series.items():
            spans = []
            for start, end in windows:
                inside = [mb for t, mb in samples if start <= t <= end]
                if len(inside) >= 2:
                    spans.append({"start_mb": round(inside[0], 1), "end_mb": round(inside[-1], 1),
                                  "max_mb": round(max(inside), 1),
                                  "growth_pct": round((inside[-1] / inside[0] - 1) * 100, 2)})
            if spans:
                out[label] = {"windows": spans, "growth_pct": max(w["growth_pct"] for w in spans)}
        return out


async def side_load(broker: Mosquitto, topics: Topics, nodes: list[str], until: float) -> dict[str, Any]:
    """Commands and schedule changes until ``until`` (monotonic); their counts and the changes' latency."""
    client_id = f"soak-{uuid.uuid4().hex[:8]}"
    counts = {"commands": 0, "changes": 0, "changes_failed": 0}
    latencies: list[float] = []
    async with (wire.Client(wire.BrokerAddress.parse(broker.url), client_id=client_id) as client,
                replies_to(client, topics, client_id=client_id) as requester):

        async def commands() -> None:
            while time.monotonic() < until:
                node = random.choice(nodes)
                body = json.dumps({"state": random.choice(["ON", "OFF"]), "sent": time.time()}).encode()
                await client.publish(topics.set(node, Command.SWITCH), body, qos=1)
                counts["commands"] += 1
                await asyncio.sleep(1 / COMMANDS_PER_S)

        async def changes() -> None:
            i = 0
            while time.monotonic() < until:
                i += 1
                node = nodes[i % 20]
                rule = {"id": "soak", "at": f"{i % 24:02d}:{i % 60:02d}", "duration": 300}
                started = time.monotonic()
                try:
                    await requester.request(SCHEDULER_SERVICE, "set",
                                            {"node": node, "change": f"soak-{i}", "rule": rule}, timeout=10)
                    counts["changes"] += 1
                    latencies.append(time.monotonic() - started)
                except RequestError:
                    counts["changes_failed"] += 1
                await asyncio.sleep(1 / CHANGES_PER_S)

        await asyncio.gather(commands(), changes())
    latencies.sort()
    counts["change_p99_ms"] = round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1) if latencies else None
    return counts


async def telemetry_figures(database: str, expected: int, outage: tuple[float, float]) -> dict[str, Any]:
    conn = await asyncpg.connect(database)
    try:
        row = await conn.fetchrow(
            """SELECT count(*) AS rows, count(DISTINCT (node, seq)) AS distinct_rows,
                      percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM stored - time)) AS p99_all,
                      percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM stored - time))
                          FILTER (WHERE time < to_timestamp($1) OR time > to_timestamp($2)) AS p99_steady
               FROM telemetry""", *outage)
    finally:
        await conn.close()
    return {"rows": row["rows"], "lost": expected - row["distinct_rows"],
            "duplicated": row["rows"] - row["distinct_rows"],
            "p99_ms": round((row["p99_steady"] or 0) * 1000, 1), "p99_all_ms": round((row["p99_all"] or 0) * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two minutes")
    parser.add_argument("--minutes", type=float, default=None,
                        help="how long the load runs (default 2 with --quick, else 60)")
    parser.add_argument("--rate", type=float, default=5000.0, help="telemetry msg/s")
    parser.add_argument("--kill", choices=["telemetry", "scheduler", "none"], default="telemetry",
                        help="the service killed with SIGKILL halfway and started again")
    args = parser.parse_args()
    minutes = args.minutes if args.minutes is not None else (2.0 if args.quick else 60.0)
    seconds = minutes * 60
    rounds = max(1, round(args.rate * seconds / NODES))
    expected = rounds * NODES

    work = Path(tempfile.mkdtemp(prefix="nodefleet-soak-"))
    broker = Mosquitto()
    postgres = EmbeddedPostgres(work / "pg", port=free_port(), password=secrets.token_urlsafe(16))
    topics = Topics(root="soak/home", fleet="soak/fleet")
    telemetry = scheduler = None
    try:
        broker.start()
        postgres.start()
        postgres.create_database("soak")
        database = postgres.dsn("soak")
        telemetry = Service(broker, database, topics, work / "telemetry.log")
        telemetry.wait_ready()
        scheduler = Scheduler(broker, database, topics, work / "scheduler.log")
        scheduler.wait_ready()
        rss = Rss()
        start = time.monotonic()
        # Steady windows for RSS: from the warm-up to the kill, and from the restart's settling to the end (the
        # broker's queue for the dead service is a high-water mark of the outage, not growth).
        warm = start + max(WARM_S, seconds / 5)
        windows = [(warm, start + seconds)]
        nodes = [f"bench-{p}-{i}" for p in range(PUBLISHERS) for i in range(NODES // PUBLISHERS)]
        _say(f"soak: {minutes:g} min, {args.rate:,.0f} msg/s of telemetry ({expected} messages), commands and "
             f"schedule changes; kill -9 of {args.kill} halfway")

        async def run() -> dict[str, Any]:
            nonlocal telemetry, scheduler, windows
            load = asyncio.create_task(asyncio.to_thread(
                run_load, broker, topics, publishers=PUBLISHERS, nodes=NODES, rounds=rounds, seq_base=0,
                rate=args.rate))
            side = asyncio.create_task(side_load(broker, topics, nodes, start + seconds))
            outage = (0.0, 0.0)
            killed = False
            while not load.done():
                now = time.monotonic()
                if not killed and args.kill != "none" and now >= start + seconds / 2:
                    killed = True
                    victim = telemetry if args.kill == "telemetry" else scheduler
                    kill_wall = time.time()
                    victim.process.kill()
                    victim.process.wait()
                    _say(f"  kill -9 {args.kill} at {now - start:.0f} s")
                    await asyncio.sleep(DOWN_S)
                    if args.kill == "telemetry":
                        telemetry = Service(broker, database, topics, work / "telemetry-2.log")
                        await asyncio.to_thread(telemetry.wait_ready)
                    else:
                        scheduler = Scheduler(broker, database, topics, work / "scheduler-2.log")
                        await asyncio.to_thread(scheduler.wait_ready)
                    windows = [(warm, now), (time.monotonic() + SETTLE_S, float("inf"))]
                    outage = (kill_wall, time.time() + SETTLE_S)
                    _say(f"  {args.kill} ready again {time.monotonic() - now:.1f} s after the kill")
                rss.sample({"telemetry": telemetry.process.pid, "scheduler": scheduler.process.pid,
                            "broker": broker._process.pid if broker._process else 0})
                await asyncio.sleep(1.0)
            published = await load
            side_counts = await side
            drain_started = time.monotonic()
            await wait_rows(database, seq_from=0, expected=expected)
            rss.sample({"telemetry": telemetry.process.pid, "scheduler": scheduler.process.pid,
                        "broker": broker._process.pid if broker._process else 0})
            figures = await telemetry_figures(database, expected, outage)
            return {"published": published, "side": side_counts, "drain_s": round(time.monotonic() - drain_started, 1),
                    "telemetry": figures}

        try:
            result = asyncio.run(run())
        except BaseException:
            # Said before the work directory goes: why the broker or a service dropped the load.
            for log_path in [broker.log_file, *sorted(work.glob("*.log"))]:
                if log_path.exists():
                    _say(f"--- {log_path.name}, its end:\n{log_path.read_text(errors='replace')[-3000:]}")
            raise
    finally:
        for service in (telemetry, scheduler):
            if service is not None:
                service.stop()
        broker.stop()
        postgres.stop("immediate")
        shutil.rmtree(work, ignore_errors=True)

    mem = rss.figures(windows)
    growth = max((m["growth_pct"] for m in mem.values()), default=None)
    t = result["telemetry"]
    details = {"rss": mem, "side": result["side"], "publish_rate": round(result["published"]["rate"]),
               "drain_s": result["drain_s"], "p99_all_ms": t["p99_all_ms"], "killed": args.kill,
               "goals": {"lost==0": t["lost"] == 0, "duplicated==0": t["duplicated"] == 0,
                         "rss_growth<=5%": growth is not None and growth <= 5},
               "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2)}
    print(json.dumps(details), flush=True)
    # All processes together: RSS at the start of the first steady window and at the end of the last.
    total_start = sum(m["windows"][0]["start_mb"] for m in mem.values())
    total_end = sum(m["windows"][-1]["end_mb"] for m in mem.values())
    print(json.dumps({
        "minutes": minutes, "msgs_sent": result["published"]["acked"], "msgs_stored": t["rows"], "lost": t["lost"],
        "duplicated": t["duplicated"], "rss_start_mb": round(total_start, 1), "rss_end_mb": round(total_end, 1),
        "rss_growth_pct": growth, "p99_ms": t["p99_ms"],
    }))


if __name__ == "__main__":
    main()

"""One node floods, fifty others go on: ``python -m bench.node_flood [--quick]``.

The telemetry service (its own process, the per-node limit set to 100
messages in 60 s), Mosquitto and an embedded PostgreSQL. Fifty nodes
send telemetry at one message a second each; in a second run over the same
service one more node (same topics as any node) publishes as fast as the
broker takes it. For the fifty, publish-to-commit p99 of each run (from the
row's device time to its commit); for the flooder, what it sent and what was
stored. Goal (issue 15): the fifty's p99 with the flood within 2x of the run
without; the flooder's excess counted, not stored. The last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from nodefleet.contracts import Topics
from nodefleet.embedded.mosquitto import Mosquitto, free_port
from nodefleet.embedded.postgres import EmbeddedPostgres

from .loadgen import publish, run_publisher
from .telemetry_ingest import Service

CALM = 50
FLOOD_RATE = 5000  # msg/s of the flooding node: 3,000 times its limit's rate
SPAWN = multiprocessing.get_context("spawn")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _calm(broker: Mosquitto, topics: Topics, seconds: int, seq_base: int) -> None:
    await publish(broker.host, broker.port, topics=topics, nodes=[f"calm-{i}" for i in range(CALM)],
                  rounds=seconds, seq_base=seq_base, rate=float(CALM))


async def _p99(database: str, seq_from: int, seq_to: int) -> tuple[float, int]:
    conn = await asyncpg.connect(database)
    try:
        row = await conn.fetchrow(
            """SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM stored - time)) AS p99,
                      count(*) AS n FROM telemetry WHERE node LIKE 'calm-%' AND seq >= $1 AND seq < $2""",
            seq_from, seq_to)
        return (row["p99"] or 0) * 1000, row["n"]
    finally:
        await conn.close()


async def _flooder_rows(database: str, seq_from: int) -> int:
    conn = await asyncpg.connect(database)
    try:
        return await conn.fetchval("SELECT count(*) FROM telemetry WHERE node = 'flooder' AND seq >= $1", seq_from)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="15 s a run (default 60)")
    args = parser.parse_args()
    seconds = 15 if args.quick else 60
    work = Path(tempfile.mkdtemp(prefix="nodefleet-flood-"))
    broker = Mosquitto()
    postgres = EmbeddedPostgres(work / "pg", port=free_port(), password=secrets.token_urlsafe(16))
    topics = Topics(root="flood/home", fleet="flood/fleet")
    service = None
    try:
        broker.start()
        postgres.start()
        postgres.create_database("flood")
        database = postgres.dsn("flood")
        service = Service(broker, database, topics, work / "service.log",
                          extra_env={"NODEFLEET_TELEMETRY_NODE_LIMIT": "100"})
        service.wait_ready()
        _say(f"without the flood: {CALM} nodes at 1 msg/s for {seconds} s")
        asyncio.run(_calm(broker, topics, seconds, 0))
        time.sleep(2)
        p99_calm, n_calm = asyncio.run(_p99(database, 0, seconds))
        _say(f"  p99 {p99_calm:.1f} ms over {n_calm} rows")

        _say(f"with one node flooding at {FLOOD_RATE} msg/s")
        base = 1_000_000
        # The flooder in its own process (as a node would be), capped at FLOOD_RATE for the same time.
        results = SPAWN.Queue()
        flooder = SPAWN.Process(target=run_publisher, args=(
            broker.host, broker.port, topics.root, topics.fleet, ["flooder"], FLOOD_RATE * seconds, base,
            float(FLOOD_RATE), time.time() + 1.0, results))
        flooder.start()
        time.sleep(1.0)
        asyncio.run(_calm(broker, topics, seconds, base))
        flood = results.get(timeout=seconds + 60)
        flooder.join(10)
        result = {"flood_sent": flood["acked"]}
        time.sleep(2)
        p99_flood, n_flood = asyncio.run(_p99(database, base, base + seconds))
        stored = asyncio.run(_flooder_rows(database, base))
        _say(f"  p99 {p99_flood:.1f} ms over {n_flood} rows; the flooder sent {result['flood_sent']}, {stored} stored")
    finally:
        if service is not None:
            service.stop()
        broker.stop()
        postgres.stop("immediate")
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({
        "calm_nodes": CALM, "seconds": seconds, "p99_calm_ms": round(p99_calm, 1), "p99_with_flood_ms": round(p99_flood, 1),
        "ratio": round(p99_flood / p99_calm, 2) if p99_calm else None, "calm_rows": [n_calm, n_flood],
        "flood_sent": result["flood_sent"], "flood_stored": stored, "cpus": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()

"""Telemetry ingest benchmark: ``python -m bench.telemetry_ingest [--quick]``.

Starts its own Mosquitto and PostgreSQL, then on the same load:

1. baselines: a bare paho subscriber counts the stream (receive rate,
   acknowledged on receipt); then paho with ``manual_ack=True`` does the
   same and acknowledges each batch after its "commit" (the same counting),
   as the service acknowledges only after commit;
2. throughput: the telemetry service (its own process, as deployed) stores
   the stream; rows per second from the first to the last commit;
3. latency: the same service under a paced load below its capacity;
   publish-to-commit latency from each row's device time (set at publish)
   to its ``stored`` time (set inside the committing transaction).

Publishers run in separate processes and publish as fast as the broker
acknowledges; their rate is reported so it can be seen that they are not
the bottleneck.  The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import queue
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from nodefleet.contracts import NodeTopic, Topics
from nodefleet.embedded.mosquitto import Mosquitto, free_port
from nodefleet.embedded.postgres import EmbeddedPostgres
from nodefleet.processes import stop_process

from .baseline import run_baseline, run_manual_ack_baseline
from .loadgen import run_publisher

ROOT = Path(__file__).resolve().parents[1]
SPAWN = multiprocessing.get_context("spawn")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _nodes(publisher: int, per_publisher: int) -> list[str]:
    return [f"bench-{publisher}-{i}" for i in range(per_publisher)]


def run_load(broker: Mosquitto | list, topics: Topics, *, publishers: int, nodes: int, rounds: int, seq_base: int,
             rate: float | None = None) -> dict:
    """Run the publisher processes to completion; their combined acknowledged rate.

    ``broker`` is anything with ``host`` and ``port``, or a list of them (the servers of a cluster):
    publisher ``p`` then publishes to the ``p``-th, in turn."""
    brokers = broker if isinstance(broker, list) else [broker]
    results = SPAWN.Queue()
    start_at = time.time() + 1.0  # let every process import before the common start
    per_rate = rate / publishers if rate else None
    procs = [
        SPAWN.Process(target=run_publisher, args=(target.host, target.port, topics.root, topics.fleet,
                                                  _nodes(p, nodes // publishers), rounds, seq_base, per_rate, start_at, results))
        for p, target in ((p, brokers[p % len(brokers)]) for p in range(publishers))
    ]
    for proc in procs:
        proc.start()
    # As long as the paced load takes, and 10 minutes more (a fixed 600 s cut every soak past ten minutes short).
    deadline = start_at + (rounds * nodes / rate if rate else 0.0) + 600
    got: list[dict] = []
    while len(got) < len(procs):
        try:
            got.append(results.get(timeout=2))
        except queue.Empty:
            failed = [proc.exitcode for proc in procs if proc.exitcode not in (None, 0)]
            if failed:
                raise RuntimeError(f"a load publisher exited with {failed[0]}: the broker dropped it") from None
            if time.time() > deadline:
                raise RuntimeError("the load publishers did not finish in time") from None
    for proc in procs:
        proc.join(10)
    acked = sum(r["acked"] for r in got)
    return {"sent": sum(r["sent"] for r in got), "acked": acked, "rate": acked / max(r["seconds"] for r in got),
            "ended": max(r["ended"] for r in got)}


def measure_baseline(broker: Mosquitto, topics: Topics, *, publishers: int, nodes: int, rounds: int,
                     target=run_baseline) -> tuple[float, dict]:
    expected = nodes // publishers * publishers * rounds
    ready, results = SPAWN.Event(), SPAWN.Queue()
    proc = SPAWN.Process(target=target, args=(broker.host, broker.port, topics.all_nodes(NodeTopic.TELEMETRY), expected, ready, results))
    proc.start()
    if not ready.wait(30):
        proc.kill()
        raise RuntimeError("the baseline subscriber did not subscribe within 30 s")
    load = run_load(broker, topics, publishers=publishers, nodes=nodes, rounds=rounds, seq_base=0)
    state = results.get(timeout=120)
    proc.join(10)
    if state["count"] < expected:
        _say(f"baseline received only {state['count']} of {expected}")
    return state["count"] / (state["last"] - state["first"]), load


class Service:
    """``python -m services.telemetry`` as its own process."""

    def __init__(self, broker: Mosquitto, database: str, topics: Topics, log_path: Path,
                 extra_env: dict[str, str] | None = None) -> None:
        env = {
            **os.environ, "PYTHONPATH": str(ROOT), "NODEFLEET_MQTT_URL": broker.url, "NODEFLEET_DATABASE_URL": database,
            "NODEFLEET_TOPIC_ROOT": topics.root, "NODEFLEET_FLEET_ROOT": topics.fleet, "NODEFLEET_LOG_FORMAT": "json",
            "NODEFLEET_INSTANCE": "bench", "NODEFLEET_TELEMETRY_CLIENT_ID": "bench-telemetry",
            # Its simulated nodes send far more than real ones: the per-node limit is checked (its cost is in
            # the figures) but never reached.
            "NODEFLEET_TELEMETRY_NODE_LIMIT": "100000000",
            **(extra_env or {}),
        }
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "services.telemetry"], env=env, cwd=ROOT,
                                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while b"telemetry_ready" not in self.log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"telemetry service did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.process)


async def wait_rows(database: str, *, seq_from: int, expected: int, stall: float = 20.0) -> None:
    """Until ``expected`` rows with seq >= seq_from are stored, or nothing moved for ``stall`` s."""
    conn = await asyncpg.connect(database)
    try:
        last, moved = -1, time.monotonic()
        while True:
            count = await conn.fetchval("SELECT count(*) FROM telemetry WHERE seq >= $1", seq_from)
            if count >= expected:
                return
            if count != last:
                last, moved = count, time.monotonic()
            elif time.monotonic() - moved > stall:
                _say(f"ingest stalled at {count} of {expected} rows")
                return
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def phase_figures(database: str, *, seq_from: int, seq_to: int, expected: int, published_by: float) -> dict:
    conn = await asyncpg.connect(database)
    try:
        row = await conn.fetchrow(
            """SELECT count(*) AS rows, count(DISTINCT (node, seq)) AS distinct_rows,
                      extract(epoch FROM max(stored) - min(stored))::float8 AS span,
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM stored - time)) AS p50,
                      percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM stored - time)) AS p99,
                      count(*) FILTER (WHERE stored > to_timestamp($3)) AS stored_after_publishing
               FROM telemetry WHERE seq >= $1 AND seq < $2""",
            seq_from, seq_to, published_by,
        )
    finally:
        await conn.close()
    return {
        "rows": row["rows"], "rate": row["rows"] / row["span"] if row["span"] else 0.0,
        "lost": expected - row["distinct_rows"], "duplicated": row["rows"] - row["distinct_rows"],
        "p50_ms": (row["p50"] or 0) * 1000, "p99_ms": (row["p99"] or 0) * 1000,
        "backlog": row["stored_after_publishing"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a shorter run (about a minute)")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--nodes", type=int, default=200, help="simulated nodes")
    parser.add_argument("--latency-rate", type=float, default=None, help="paced msg/s of the latency phase")
    args = parser.parse_args()
    rounds = 500 if args.quick else 1500  # messages per node: 100,000 or 300,000 in all
    latency_rounds = 75 if args.quick else 300

    work = Path(tempfile.mkdtemp(prefix="nodefleet-bench-"))
    broker = Mosquitto()
    postgres = EmbeddedPostgres(work / "pg", port=free_port(), password=secrets.token_urlsafe(16))
    broker.start()
    service = None
    try:
        postgres.start()
        postgres.create_database("bench")
        database = postgres.dsn("bench")
        total = args.nodes // args.publishers * args.publishers * rounds

        _say(f"baseline: bare paho subscriber, {total} messages from {args.publishers} publisher processes")
        base_topics = Topics(root="baseline/home", fleet="baseline/fleet")
        baseline_rate, baseline_load = measure_baseline(
            broker, base_topics, publishers=args.publishers, nodes=args.nodes, rounds=rounds)
        _say(f"  baseline {baseline_rate:,.0f} msg/s; publishers {baseline_load['rate']:,.0f} msg/s")

        _say(f"baseline: paho with manual acks after each batch, {total} messages")
        ack_topics = Topics(root="baseline-ack/home", fleet="baseline-ack/fleet")
        manual_ack_rate, manual_ack_load = measure_baseline(
            broker, ack_topics, publishers=args.publishers, nodes=args.nodes, rounds=rounds,
            target=run_manual_ack_baseline)
        _say(f"  paho manual ack {manual_ack_rate:,.0f} msg/s; publishers {manual_ack_load['rate']:,.0f} msg/s")

        topics = Topics(root="bench/home", fleet="bench/fleet")
        service = Service(broker, database, topics, work / "service.log")
        service.wait_ready()
        _say(f"throughput: telemetry service, {total} messages")
        load = run_load(broker, topics, publishers=args.publishers, nodes=args.nodes, rounds=rounds, seq_base=0)
        _say(f"  publishers {load['rate']:,.0f} msg/s")
        asyncio.run(wait_rows(database, seq_from=0, expected=total))
        throughput = asyncio.run(phase_figures(database, seq_from=0, seq_to=rounds, expected=total,
                                              published_by=load["ended"]))
        _say(f"  stored {throughput['rows']} rows at {throughput['rate']:,.0f} rows/s; "
             f"{throughput['backlog']} were still waiting when the publishers finished")

        latency_rate = args.latency_rate or min(15_000.0, 0.8 * throughput["rate"])
        latency_total = args.nodes // args.publishers * args.publishers * latency_rounds
        _say(f"latency: paced at {latency_rate:,.0f} msg/s, {latency_total} messages")
        seq_base = rounds
        paced = run_load(broker, topics, publishers=args.publishers, nodes=args.nodes, rounds=latency_rounds,
                         seq_base=seq_base, rate=latency_rate)
        asyncio.run(wait_rows(database, seq_from=seq_base, expected=latency_total))
        latency = asyncio.run(phase_figures(database, seq_from=seq_base, seq_to=seq_base + latency_rounds,
                                            expected=latency_total, published_by=paced["ended"]))
        _say(f"  publishers {paced['rate']:,.0f} msg/s; p50 {latency['p50_ms']:.0f} ms, p99 {latency['p99_ms']:.0f} ms")
    finally:
        if service is not None:
            service.stop()
        broker.stop()
        postgres.stop("immediate")
        shutil.rmtree(work, ignore_errors=True)

    figures = {
        "ingest_msgs_per_s": round(throughput["rate"]),
        "baseline_msgs_per_s": round(baseline_rate),
        "ratio": round(throughput["rate"] / baseline_rate, 3) if baseline_rate else 0.0,
        "paho_manual_ack_msgs_per_s": round(manual_ack_rate),
        "ratio_manual_ack": round(throughput["rate"] / manual_ack_rate, 3) if manual_ack_rate else 0.0,
        "publish_rate": round(load["rate"]),
        "p50_ms": round(latency["p50_ms"], 1),
        "p99_ms": round(latency["p99_ms"], 1),
        "lost": throughput["lost"] + latency["lost"],
        "duplicated": throughput["duplicated"] + latency["duplicated"],
        "backlog_at_publish_end": throughput["backlog"],
        "latency_publish_rate": round(paced["rate"]),
        "cpus": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

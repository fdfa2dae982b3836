"""Scale-out benchmark: ``python -m bench.scale_out [--quick]``.

The same QoS 1 telemetry load, in the same run, stored by:

1. one telemetry instance on Mosquitto (the baseline);
2. two instances on the same Mosquitto, splitting the stream through
   ``$share/<group>/...`` (``NODEFLEET_TELEMETRY_SHARED_GROUP``);
3. two instances on a 3-server NATS cluster (``nodefleet.embedded.nats``),
   reading one JetStream durable consumer (``NODEFLEET_ENGINE_URL``); the
   publishers speak MQTT to the servers in turn.

Each instance is ``python -m services.telemetry`` in its own process, as
deployed.  Cost is CPU seconds (user + system, from ``/proc/<pid>/stat``)
of all service instances, from just before the load starts to the moment
the last row is stored, per 1,000 rows persisted: on 2 cores the speed of
two instances says little, their cost says whether throughput can grow with
cores.  The brokers' CPU is in the details line, to show what bounds a
figure.  Rates are rows / (last - first ``stored``), as in
``bench.telemetry_ingest``, whose load generator, service runner and row
checks this reuses.  The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nodefleet.contracts import Topics
from nodefleet.embedded.mosquitto import Mosquitto, free_port
from nodefleet.embedded.nats import NatsCluster
from nodefleet.embedded.postgres import EmbeddedPostgres

from .telemetry_ingest import Service, _say, phase_figures, run_load, wait_rows

TICKS = os.sysconf("SC_CLK_TCK")
IDLE_S = 2.0


@dataclass(frozen=True)
class Endpoint:
    """An MQTT listener as ``run_load`` and ``Service`` take it."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def cpu_seconds(pids: list[int | None]) -> float:
    """User + system CPU time of the running processes among ``pids``."""
    total = 0
    for pid in pids:
        if pid is None:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / TICKS


def wakeups(pids: list[int | None]) -> int:
    """Context switches (voluntary and not) of the running processes among ``pids``: how often they slept."""
    total = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except (OSError, TypeError):
            continue
        total += sum(int(line.split()[1]) for line in lines if "ctxt_switches:" in line)
    return total


@dataclass
class Phase:
    name: str
    instances: int
    endpoints: list[Endpoint]
    """The publishers' MQTT listeners, taken in turn."""
    control: Endpoint
    """Where the services' control plane connects (NODEFLEET_MQTT_URL)."""
    engine_url: str | None
    broker_pids: list[int | None]


def run_phase(phase: Phase, database: str, work: Path, *, seq_base: int, rounds: int, publishers: int,
              nodes: int) -> dict:
    topics = Topics(root=f"{phase.name}/home", fleet=f"{phase.name}/fleet")
    group = f"ingest-{phase.name}" if phase.instances > 1 or phase.engine_url else None
    services = []
    try:
        for i in range(phase.instances):
            env = {"NODEFLEET_INSTANCE": f"{phase.name}-{i}", "NODEFLEET_TELEMETRY_CLIENT_ID": f"{phase.name}-{i}"}
            if group:
                env["NODEFLEET_TELEMETRY_SHARED_GROUP"] = group
            if phase.engine_url:
                env["NODEFLEET_ENGINE_URL"] = phase.engine_url
            services.append(Service(phase.control, database, topics, work / f"{phase.name}-{i}.log", env))
        for service in services:
            service.wait_ready()
        pids = [s.process.pid for s in services]
        # What the instances cost doing nothing (keepalives, heartbeats, the batch loop's wake-ups).
        idle_before = cpu_seconds(pids)
        time.sleep(IDLE_S)
        idle = (cpu_seconds(pids) - idle_before) / IDLE_S
        cpu_before, broker_before, began = cpu_seconds(pids), cpu_seconds(phase.broker_pids), time.monotonic()
        woke_before = wakeups(pids)
        total = nodes // publishers * publishers * rounds
        _say(f"{phase.name}: {phase.instances} instance(s), {total} messages from {publishers} publishers")
        load = run_load(phase.endpoints, topics, publishers=publishers, nodes=nodes, rounds=rounds,
                        seq_base=seq_base)
        asyncio.run(wait_rows(database, seq_from=seq_base, expected=total, stall=10.0))
        cpu = cpu_seconds(pids) - cpu_before
        measured_s = time.monotonic() - began
        woke = wakeups(pids) - woke_before
        broker_cpu = cpu_seconds(phase.broker_pids) - broker_before
    finally:
        for service in services:
            service.stop()
    figures = asyncio.run(phase_figures(database, seq_from=seq_base, seq_to=seq_base + rounds, expected=total,
                                        published_by=load["ended"]))
    persisted = figures["rows"] - figures["duplicated"]
    result = {
        "rate": round(figures["rate"]), "rows": figures["rows"], "lost": figures["lost"],
        "duplicated": figures["duplicated"], "publish_rate": round(load["rate"]), "backlog": figures["backlog"],
        "cpu_s": round(cpu, 2), "cpu_s_per_1k": round(cpu / persisted * 1000, 4) if persisted else None,
        "broker_cpu_s": round(broker_cpu, 2), "p99_ms": round(figures["p99_ms"], 1),
        "measured_s": round(measured_s, 2), "idle_cpu_s": round(idle * measured_s, 2),
        "wakeups_per_1k": round(woke / persisted * 1000, 1) if persisted else None,
    }
    _say(f"  {result}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a shorter run (under 2 minutes)")
    parser.add_argument("--publishers", type=int, default=3, help="publisher processes")
    parser.add_argument("--nodes", type=int, default=300, help="simulated nodes")
    parser.add_argument("--phase", action="append", choices=["one", "two", "nats"],
                        help="run only these phases (repeatable; the summary line then lacks the others)")
    args = parser.parse_args()
    rounds = 500 if args.quick else 1500  # messages per node: 150,000 or 450,000 a phase

    work = Path(tempfile.mkdtemp(prefix="nodefleet-bench-"))
    broker = Mosquitto()
    cluster = NatsCluster(3)
    postgres = EmbeddedPostgres(work / "pg", port=free_port(), password=secrets.token_urlsafe(16))
    started = time.monotonic()
    try:
        broker.start()
        cluster.start()
        postgres.start()
        postgres.create_database("bench")
        database = postgres.dsn("bench")
        mosquitto = Endpoint(broker.host, broker.port)
        nats_mqtt = [Endpoint(cluster.host, s.mqtt_port) for s in cluster.servers]
        nats_pids = [cluster.pid(i) for i in range(len(cluster.servers))]
        phases = [
            Phase("one", 1, [mosquitto], mosquitto, None, [broker.pid]),
            Phase("two", 2, [mosquitto], mosquitto, None, [broker.pid]),
            Phase("nats", 2, nats_mqtt, nats_mqtt[0], cluster.url, nats_pids),
        ]
        results = {}
        for index, phase in enumerate(phases):
            if args.phase and phase.name not in args.phase:
                continue
            results[phase.name] = run_phase(phase, database, work, seq_base=index * rounds, rounds=rounds,
                                            publishers=args.publishers, nodes=args.nodes)
    finally:
        broker.stop()
        cluster.stop()
        postgres.stop("immediate")
        shutil.rmtree(work, ignore_errors=True)

    print(json.dumps({**results, "seconds": round(time.monotonic() - started, 1), "cpus": os.cpu_count(),
                      "load_average": round(os.getloadavg()[0], 2)}))
    empty = {"rate": None, "cpu_s_per_1k": None}
    one, two, nats = (results.get(name, empty) for name in ("one", "two", "nats"))
    print(json.dumps({
        "one_instance_msgs_per_s": one["rate"],
        "two_instances_msgs_per_s": two["rate"],
        "cpu_s_per_1k_one": one["cpu_s_per_1k"],
        "cpu_s_per_1k_two": two["cpu_s_per_1k"],
        "cost_ratio": round(two["cpu_s_per_1k"] / one["cpu_s_per_1k"], 3)
        if one["cpu_s_per_1k"] and two["cpu_s_per_1k"] else None,
        "nats_msgs_per_s": nats["rate"],
        "nats_cpu_s_per_1k": nats["cpu_s_per_1k"],
        "lost": sum(r["lost"] for r in results.values()),
        "duplicated": sum(r["duplicated"] for r in results.values()),
    }))


if __name__ == "__main__":
    main()

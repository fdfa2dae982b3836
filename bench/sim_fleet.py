"""Fleet simulation: N nodes, each the real firmware on the real MicroPython interpreter.

Starts a Mosquitto on loopback and N simulated nodes (``nodefleet.sim``), then
measures how long until every node is online, how much of the expected
telemetry arrives in a fixed window, and what each node costs in memory and
CPU.  The baseline in the same run is the bare interpreter: N ``micropython``
processes with the same heap doing nothing, so the memory ratio says what
the firmware adds on top of the interpreter itself.

    python -m bench.sim_fleet --quick        # 100 nodes, 30 s window
    python -m bench.sim_fleet --nodes 200 --window 60

Last line, JSON: nodes, online, online_within_s, telemetry_received,
telemetry_expected, pss_mb_per_node, baseline_pss_mb_per_process, ratio_pss,
fleet_cpu_cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt

from nodefleet.contracts import ONLINE, NodeTopic, Topics
from nodefleet.embedded.mosquitto import Mosquitto
from nodefleet.sim import HEAP, SimFleet, interpreter

TICKS = os.sysconf("SC_CLK_TCK")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def pss_mb(pid: int) -> float:
    """Proportional set size: shared interpreter pages are split between the processes using them."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def baseline_pss(count: int) -> float:
    """Mean PSS of ``count`` idle interpreters with the nodes' heap size."""
    processes = [
        subprocess.Popen([interpreter(), "-X", f"heapsize={HEAP}", "-c", "import time\ntime.sleep(30)"],
                         stdin=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        time.sleep(1.0)
        return sum(pss_mb(p.pid) for p in processes) / count
    finally:
        for process in processes:
            process.kill()
            process.wait()


async def measure(broker: Mosquitto, nodes: int, window: float, period: int) -> dict[str, float | int]:
    topics = Topics(root="benchfleet")
    online: dict[str, float] = {}
    telemetry = 0
    async with aiomqtt.Client(broker.host, broker.port, identifier="bench-fleet-watch") as watch:
        await watch.subscribe(topics.all_nodes(NodeTopic.STATUS), qos=1)
        await watch.subscribe(topics.all_nodes(NodeTopic.TELEMETRY), qos=0)
        fleet = SimFleet(mqtt_url=broker.url, count=nodes, topics=topics, name_prefix="n", telemetry_period=period)
        started = time.monotonic()
        window_start: float | None = None
        cpu_before: float = 0.0
        await fleet.start()
        try:
            async with asyncio.timeout(60 + window):
                async for message in watch.messages:
                    node = topics.parse(str(message.topic)).node
                    if message.topic.matches(topics.all_nodes(NodeTopic.STATUS)):
                        if message.payload == ONLINE.encode():
                            online.setdefault(node, time.monotonic() - started)
                        if len(online) == nodes and window_start is None:
                            window_start = time.monotonic()
                            cpu_before = sum(cpu_seconds(n.pid) for n in fleet.nodes if n.pid)
                            _say(f"all {nodes} nodes online after {max(online.values()):.1f} s; counting telemetry for {window:g} s")
                    elif window_start is not None:
                        telemetry += 1
                    if window_start is not None and time.monotonic() - window_start >= window:
                        break
        except TimeoutError:
            _say(f"only {len(online)} of {nodes} nodes came online")
        pids = [n.pid for n in fleet.nodes if n.pid and n.running]
        elapsed = time.monotonic() - window_start if window_start else 0.0
        cpu = (sum(cpu_seconds(p) for p in pids) - cpu_before) / elapsed if elapsed else 0.0
        pss = sum(pss_mb(p) for p in pids) / max(1, len(pids))
        await fleet.stop()
    return {
        "nodes": nodes,
        "online": len(online),
        "online_within_s": round(max(online.values()), 2) if online else None,
        "telemetry_received": telemetry,
        "telemetry_expected": int(nodes * window / period),
        "pss_mb_per_node": round(pss, 2),
        "fleet_cpu_cores": round(cpu, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 nodes, 30 s window")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--window", type=float, default=60.0, help="seconds of telemetry counted once all are online")
    parser.add_argument("--period", type=int, default=5, help="telemetry period of each node (s)")
    args = parser.parse_args()
    nodes, window = (100, 30.0) if args.quick else (args.nodes, args.window)
    with Mosquitto() as broker:
        figures = asyncio.run(measure(broker, nodes, window, args.period))
    baseline = baseline_pss(min(nodes, 20))
    figures["baseline_pss_mb_per_process"] = round(baseline, 2)
    figures["ratio_pss"] = round(figures["pss_mb_per_node"] / baseline, 2) if baseline else None
    _say(f"{figures['online']}/{nodes} online; telemetry {figures['telemetry_received']}/{figures['telemetry_expected']}; "
         f"{figures['pss_mb_per_node']} MB per node (bare interpreter {baseline:.2f} MB); "
         f"fleet CPU {figures['fleet_cpu_cores']} cores")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

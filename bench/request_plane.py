"""The telemetry control plane's fleet requests on nodefleet.wire (today) and on FastStream, both brokers.

    python -m bench.request_plane [--quick]

For each broker (a Mosquitto, the embedded amqtt with a login, each its own
process) and each plane (``NODEFLEET_TELEMETRY_REQUEST_PLANE`` wire /
faststream), the telemetry service's ``ControlPlane`` runs in a process of
its own with typed handlers over the real request and answer models
(``devices``: DevicesQuery -> three DeviceRow; no database, so the figures
are the request plane's), and this process sends ``telemetry/devices``
requests through ``fleet.Requester``: ``--sequential`` one at a time
(latency), then ``--pipelined`` with ``--in-flight`` outstanding
(throughput). The same requester drives both planes on the same broker in the
same run; ``ratio`` is faststream / wire. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import time
import uuid
from typing import Any

from nodefleet.contracts import Topics
from nodefleet.contracts.queries import TELEMETRY_SERVICE, DeviceRow, DevicesQuery
from nodefleet.embedded.mosquitto import Mosquitto, free_port
from nodefleet.fleet import ErrorReporter, replies_to, typed
from nodefleet.wire import BrokerAddress, Client

USER, PASSWORD = "bench", "bench-password"
ROWS = [DeviceRow(node=f"n{i}", online=True, last_seen=1_795_000_000 + i, relay="ON", mode="auto", state_seq=i,
                  fw="1.4.0", chip_id=f"chip{i}") for i in range(3)]


class _Devices:
    async def devices(self, query: DevicesQuery) -> list[DeviceRow]:
        return ROWS


def _amqtt(port: int, ready: Any) -> None:
    from nodefleet.embedded.broker import EmbeddedBroker

    async def run() -> None:
        async with EmbeddedBroker(host="127.0.0.1", port=port, users={USER: PASSWORD}, allow_anonymous=False):
            ready.set()
            await asyncio.Event().wait()

    asyncio.run(run())


def _responder(url: str, root: str, plane: str, ready: Any) -> None:
    os.environ["NODEFLEET_LOG_LEVEL"] = "warning"
    from services.telemetry.control import ControlPlane
    from services.telemetry.settings import TelemetrySettings

    async def run() -> None:
        settings = TelemetrySettings(mqtt_url=url, topic_root=f"{root}/home", fleet_root=f"{root}/fleet",
                                     instance=plane, request_plane=plane)
        errors = ErrorReporter(TELEMETRY_SERVICE, settings.topics)
        control = ControlPlane(settings, {"devices": typed(_Devices().devices)}, errors)
        task = asyncio.create_task(control.run())
        await control.ready.wait()
        ready.set()
        await task

    asyncio.run(run())


async def _measure(url: str, topics: Topics, sequential: int, pipelined: int, in_flight: int) -> dict[str, Any]:
    client_id = f"bench-req-{uuid.uuid4().hex[:8]}"
    async with (Client(BrokerAddress.parse(url), client_id=client_id, nodelay=True, pending_calls=100_000) as client,
                replies_to(client, topics, client_id=client_id) as requester):
        query = DevicesQuery()
        for _ in range(30):  # warm up both sides
            await requester.request(TELEMETRY_SERVICE, "devices", query, timeout=10)
        latencies = []
        for _ in range(sequential):
            started = time.perf_counter()
            rows = await requester.request(TELEMETRY_SERVICE, "devices", query, timeout=10)
            latencies.append((time.perf_counter() - started) * 1000)
        assert len(rows) == 3 and rows[0]["node"] == "n0"
        gate = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with gate:
                await requester.request(TELEMETRY_SERVICE, "devices", query, timeout=30)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(pipelined)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {"p50_ms": round(statistics.median(latencies), 3),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 3),
            "req_per_s": round(pipelined / elapsed)}


def _run_plane(url: str, plane: str, args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    root = f"bench-{uuid.uuid4().hex[:6]}"
    ready = ctx.Event()
    process = ctx.Process(target=_responder, args=(url, root, plane, ready), daemon=True)
    process.start()
    try:
        if not ready.wait(30):
            raise RuntimeError(f"the {plane} control plane did not come up on {url}")
        topics = Topics(root=f"{root}/home", fleet=f"{root}/fleet")
        return asyncio.run(_measure(url, topics, args.sequential, args.pipelined, args.in_flight))
    finally:
        process.terminate()
        process.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--sequential", type=int, default=None)
    parser.add_argument("--pipelined", type=int, default=None)
    parser.add_argument("--in-flight", type=int, default=50)
    args = parser.parse_args()
    args.sequential = args.sequential or (300 if args.quick else 1000)
    args.pipelined = args.pipelined or (3000 if args.quick else 10_000)

    results: dict[str, Any] = {}
    with Mosquitto() as mosquitto:
        for plane in ("wire", "faststream"):
            results[f"mosquitto_{plane}"] = figures = _run_plane(mosquitto.url, plane, args)
            print(f"mosquitto {plane:10}: {figures}", flush=True)
    port = free_port()
    ready = mp.get_context("spawn").Event()
    broker = mp.get_context("spawn").Process(target=_amqtt, args=(port, ready), daemon=True)
    broker.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the embedded broker did not start")
        url = f"mqtt://{USER}:{PASSWORD}@127.0.0.1:{port}"
        for plane in ("wire", "faststream"):
            results[f"amqtt_{plane}"] = figures = _run_plane(url, plane, args)
            print(f"amqtt     {plane:10}: {figures}", flush=True)
    finally:
        broker.terminate()
        broker.join(10)
    line: dict[str, Any] = {}
    for name in ("mosquitto", "amqtt"):
        wire_, fast = results[f"{name}_wire"], results[f"{name}_faststream"]
        line.update({f"{name}_wire_p50_ms": wire_["p50_ms"], f"{name}_wire_p99_ms": wire_["p99_ms"],
                     f"{name}_wire_req_per_s": wire_["req_per_s"], f"{name}_faststream_p50_ms": fast["p50_ms"],
                     f"{name}_faststream_p99_ms": fast["p99_ms"], f"{name}_faststream_req_per_s": fast["req_per_s"],
                     f"{name}_ratio_req_per_s": round(fast["req_per_s"] / wire_["req_per_s"], 3),
                     f"{name}_ratio_p50": round(fast["p50_ms"] / wire_["p50_ms"], 3)})
    line.update({"sequential": args.sequential, "pipelined": args.pipelined, "in_flight": args.in_flight,
                 "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2)})
    print(json.dumps(line))


if __name__ == "__main__":
    main()

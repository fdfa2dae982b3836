"""Provisioning burst: N registrations over MQTT fleet requests, then their first-online messages.

    python -m bench.provision_burst --quick      # 1,000 devices, on each broker in turn

Runs an embedded PostgreSQL and the provisioner as its own process (``python
-m services.provisioner``, so the load generator here does not share its CPU
time), first against the embedded amqtt broker with our dynamic-security
layer in its own process (what ``nodefleet up`` runs), then against Mosquitto
with its dynamic-security plugin (what ``compose.yaml`` runs).  Measures, per
broker:

- registrations per second (each one a database row plus a broker client and
  role created over ``$CONTROL/dynamic-security/v1``), with ``--concurrency``
  requests in flight; beside it the same requests answered by a bare echo
  responder on the same broker (the baseline of the request path itself);
- for each device, the time from its ``online`` + info publishes to the
  retained config arriving (provisioned, config and discovery published).

Mosquitto 2.0's plugin rewrites its whole JSON file after every command
(about 10 us per KB; 1,000 nodes make 850 KB), so its rate falls as the
fleet grows: each registration there costs two such rewrites.

Last line, JSON: ``{"registrations_per_s", "p99_online_to_provisioned_ms",
"errors", "broker", ...}`` for the embedded broker (``--broker`` picks one),
with the other broker's figures under its name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from nodefleet import wire
from nodefleet.contracts import FleetReply, FleetRequest, Info, NodeTopic, Topics
from nodefleet.contracts.provisioning import PROVISIONER_SERVICE
from nodefleet.contracts.topics import HA_DISCOVERY_BASE
from nodefleet.embedded.broker import EmbeddedBroker
from nodefleet.embedded.dynsec import mosquitto_dynsec_config
from nodefleet.embedded.mosquitto import Mosquitto, free_port
from nodefleet.embedded.postgres import EmbeddedPostgres
from nodefleet.fleet import Requester, RequestError
from nodefleet.processes import stop_process

ADMIN = ("provisioner", "bench-admin-pw")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _feed(client: wire.Client, requester: Requester, on_other=None) -> None:
    async for message in client.messages:
        if not requester.feed(message) and on_other is not None:
            on_other(message)


async def _wait_ready(requester: Requester, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await requester.request(PROVISIONER_SERVICE, "list", {"status": "pending"}, timeout=2.0)
            return
        except RequestError:
            if time.monotonic() > deadline:
                raise SystemExit("the provisioner did not answer within 60 s")


async def _burst(requester: Requester, service: str, action: str, bodies: list[dict], concurrency: int
                 ) -> tuple[list, int, float]:
    results: list = [None] * len(bodies)
    errors = 0
    queue = list(enumerate(bodies))

    async def worker() -> None:
        nonlocal errors
        while queue:
            index, body = queue.pop()
            try:
                results[index] = await requester.request(service, action, body, timeout=30.0)
            except RequestError as exc:
                errors += 1
                if errors <= 3:
                    _say(f"{action} failed: {exc}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, errors, time.perf_counter() - started


async def _echo(client: wire.Client, topics: Topics) -> None:
    """The baseline responder: answers every request at once and concurrently (as the provisioner does), no work."""
    pending: set[asyncio.Task] = set()
    async for message in client.messages:
        request = FleetRequest.model_validate_json(message.payload)
        reply = FleetReply(transaction=request.transaction, status="ok", data={})
        task = asyncio.create_task(client.publish(request.reply_to, reply.model_dump_json(), qos=1))
        pending.add(task)
        task.add_done_callback(pending.discard)


async def run(broker: Mosquitto | EmbeddedBrokerProcess, database: str, count: int, concurrency: int, credentials: str) -> dict:
    topics = Topics(root=f"b{uuid.uuid4().hex[:6]}/home", fleet=f"b{uuid.uuid4().hex[:6]}/fleet")
    admin = wire.BrokerAddress(broker.host, broker.port, *ADMIN)
    env = {**os.environ, "NODEFLEET_MQTT_URL": f"mqtt://{ADMIN[0]}:{ADMIN[1]}@{broker.host}:{broker.port}",
           "NODEFLEET_DATABASE_URL": database, "NODEFLEET_TOPIC_ROOT": topics.root,
           "NODEFLEET_FLEET_ROOT": topics.fleet, "NODEFLEET_PROVISIONER_CREDENTIALS": credentials,
           "NODEFLEET_PROVISIONER_HTTP_PORT": "-1", "NODEFLEET_LOG_LEVEL": "warning", "NODEFLEET_LOG_FORMAT": "console",
           "NODEFLEET_PROVISIONER_DEFAULT_TZ": "Europe/Berlin"}
    service = subprocess.Popen([sys.executable, "-m", "services.provisioner"], env=env, stdin=subprocess.DEVNULL)
    try:
        # Bursts on purpose: no warnings about many pending publishes.
        async with wire.Client(admin, client_id=f"bench-{uuid.uuid4().hex[:8]}", max_queued_outgoing=100_000,
                               nodelay=True, pending_calls=100_000) as client, \
                wire.Client(admin, client_id=f"echo-{uuid.uuid4().hex[:8]}", nodelay=True,
                            pending_calls=100_000) as echo_client:
            requester = Requester(client, topics, client_id=f"bench{uuid.uuid4().hex[:8]}")
            await requester.start()
            provisioned_at: dict[str, float] = {}

            discovered: set[str] = set()
            switch_configs = f"{HA_DISCOVERY_BASE}/switch/+/relay/config"

            def on_other(message: wire.Message) -> None:
                topic = message.topic
                if topic.startswith(f"{HA_DISCOVERY_BASE}/"):
                    discovered.add(topic.split("/")[2])
                else:
                    provisioned_at.setdefault(topics.parse(topic).node, time.perf_counter())

            await client.subscribe(topics.all_nodes(NodeTopic.CONFIG), qos=1)
            await client.subscribe(switch_configs, qos=1)
            feeder = asyncio.create_task(_feed(client, requester, on_other))
            await echo_client.subscribe(topics.requests("echo"), qos=1)
            echo = asyncio.create_task(_echo(echo_client, topics))
            await _wait_ready(requester)

            _say(f"baseline: {count} requests to a bare echo responder, {concurrency} in flight")
            _, base_errors, base_time = await _burst(requester, "echo", "register", [{}] * count, concurrency)
            _say(f"registering {count} devices, {concurrency} in flight")
            run_tag = topics.root.split("/")[0]  # runs share the database: names differ per run
            bodies = [{"home_id": "home", "device_name": f"bench {run_tag} {i}"} for i in range(count)]
            registrations, reg_errors, reg_time = await _burst(requester, PROVISIONER_SERVICE, "register", bodies,
                                                               concurrency)
            nodes = [r["mqtt_config"]["node_name"] for r in registrations if r]
            _say(f"registered {len(nodes)} in {reg_time:.2f} s; first online of each")
            online_at: dict[str, float] = {}
            for index, node in enumerate(nodes):
                # What a node does on connect (published here with the service user: the figure is the provisioner's).
                online_at[node] = time.perf_counter()
                await client.publish(topics.status(node), "online", qos=1, retain=True)
                info = Info(chip_id=f"{run_tag}{index:06d}", fw="bench", caps=["switch", "temperature", "humidity"])
                await client.publish(topics.info(node), info.model_dump_json(), qos=1, retain=True)
            deadline = time.monotonic() + 60
            while len(provisioned_at) < len(nodes) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            latencies = [provisioned_at[n] - online_at[n] for n in nodes if n in provisioned_at]
            missing = len(nodes) - len(latencies)
            while len(discovered & set(nodes)) < len(nodes) and time.monotonic() < deadline + 30:
                await asyncio.sleep(0.1)
            undiscovered = len(set(nodes) - discovered)
            feeder.cancel()
            echo.cancel()
    finally:
        stop_process(service)
    if not latencies:
        raise SystemExit("no device was provisioned")
    figures = {
        "registrations_per_s": round(count / reg_time, 1),
        "p99_online_to_provisioned_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "errors": reg_errors + missing + undiscovered + base_errors,
        "p50_online_to_provisioned_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "baseline_requests_per_s": round(count / base_time, 1),
        "ratio_registrations_to_baseline": round((count / reg_time) / (count / base_time), 3),
        "devices": count,
        "concurrency": concurrency,
        "credentials": credentials,
    }
    _say(f"provisioned {len(latencies)} of {len(nodes)}; registration errors {reg_errors}, never provisioned {missing}, "
         f"no discovery config {undiscovered}")
    return figures


async def _serve_embedded(port: int) -> None:
    async with EmbeddedBroker(port=port, dynsec_admin=ADMIN, allow_anonymous=False):
        await asyncio.Event().wait()


class EmbeddedBrokerProcess:
    """The embedded broker with dynamic security in its own process, as `nodefleet up` would run it beside nothing else."""

    def __init__(self) -> None:
        self.host, self.port = "127.0.0.1", free_port()
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> EmbeddedBrokerProcess:
        self._process = subprocess.Popen([sys.executable, "-m", "bench.provision_burst", "--serve-embedded-broker",
                                          str(self.port)], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise SystemExit("the embedded broker did not start within 20 s")

    def __exit__(self, *exc: object) -> None:
        stop_process(self._process)


def _measure(broker_kind: str, work: Path, database: str, count: int, concurrency: int, credentials: str) -> dict:
    _say(f"-- {broker_kind} broker")
    if broker_kind == "embedded":
        with EmbeddedBrokerProcess() as broker:
            figures = asyncio.run(run(broker, database, count, concurrency, credentials))
    else:
        config = mosquitto_dynsec_config(work / "dynsec", admin=ADMIN[0], password=ADMIN[1])
        with Mosquitto(extra_config=config) as broker:
            figures = asyncio.run(run(broker, database, count, concurrency, credentials))
    return {**figures, "broker": broker_kind}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 devices (default 5,000)")
    parser.add_argument("--devices", type=int, help="How many devices to register")
    parser.add_argument("--concurrency", type=int, default=32, help="Registrations in flight")
    parser.add_argument("--broker", choices=("both", "embedded", "mosquitto"), default="both",
                        help="The embedded amqtt broker with our dynamic security, Mosquitto with its plugin, or both")
    parser.add_argument("--serve-embedded-broker", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--credentials", choices=("dynsec", "none"), default="dynsec",
                        help="none: skip the broker credentials, to see what they cost")
    args = parser.parse_args()
    if args.serve_embedded_broker:
        asyncio.run(_serve_embedded(args.serve_embedded_broker))
        return
    count = args.devices or (1000 if args.quick else 5000)
    work = Path(tempfile.mkdtemp(prefix="nodefleet-bench-provision-"))
    postgres = EmbeddedPostgres(work / "pg", port=free_port(), password=secrets.token_urlsafe(16), settings={"fsync": "off"})
    postgres.start()
    kinds = ["embedded", "mosquitto"] if args.broker == "both" else [args.broker]
    try:
        results = [_measure(kind, work, postgres.dsn(), count, args.concurrency, args.credentials) for kind in kinds]
    finally:
        postgres.stop("immediate")
    figures = dict(results[0])
    for other in results[1:]:
        figures[other["broker"]] = {k: v for k, v in other.items() if k not in ("broker", "devices", "concurrency",
                                                                               "credentials")}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

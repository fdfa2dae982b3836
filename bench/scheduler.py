"""Scheduler benchmark: ``python -m bench.scheduler [--quick] [--spread S]``.

N nodes (10,000) whose rules fall due within the same minute; the nodes are
stand-ins that never execute (a publisher retains their config, schedule,
``online`` status and an idle state), so every run needs the scheduler's
backup.  Each node gets a tz offset of a whole number of seconds, so its
``HH:MM`` rule starts at its own second of the minute.

"Fall due in the same minute" is read as rules written for one ``HH:MM`` by
nodes whose clocks and zones differ: the default ``--spread 60`` puts an equal
share of the runs on each second of the minute (about 167 a second).
``--spread 1`` is the worst case the contract allows, every run on the same
second (the same ``HH:MM`` in the same zone); its figures are in
``bench/README.md``.  The JSON line says which spread was measured.

The scheduler runs as deployed (its own process, PostgreSQL claims); a bare
socket subscriber in this process stamps each ``set/switch`` as it is read
(see ``Receiver``).  Lateness is arrival minus (run start + grace).  Baseline,
in a separate process during the same minute: plain asyncio ``loop.call_at``
lateness for the same number of timers at the same due times.  The last line
printed is JSON: the issue's keys plus ``spread_s`` and ``grace_s``.

``BENCH_SCHEDULER_LOG=debug`` makes the scheduler log each batch's timing
(due to claim, waiting for claims, queued, confirmed); ``BENCH_KEEP=1`` keeps
the work directory with ``scheduler.log``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho

from nodefleet.contracts import Topics
from nodefleet.contracts.topics import Command
from nodefleet.embedded.mosquitto import Mosquitto, free_port
from nodefleet.embedded.postgres import EmbeddedPostgres
from nodefleet.processes import stop_process
from nodefleet.wire import packets

ROOT = Path(__file__).resolve().parents[1]
SPAWN = multiprocessing.get_context("spawn")
GRACE = 2.0
DURATION = 600


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def plan(nodes: int, first: int, spread: int) -> list[tuple[str, int, int, str]]:
    """(node, start, tz offset, HH:MM) for each node; starts on ``spread`` seconds from ``first``."""
    out = []
    for i in range(nodes):
        start = first + i % spread
        offset = (-start) % 60
        local = (start + offset) % 86400
        out.append((f"b{i:05d}", start, offset, f"{local // 3600:02d}:{local // 60 % 60:02d}"))
    return out


def baseline(dues: list[float], results) -> None:
    """Plain asyncio: one loop.call_at per due time; lateness in ms."""
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        late: list[float] = []
        done = asyncio.Event()

        def fire(due: float) -> None:
            late.append((time.time() - due) * 1000)
            if len(late) == len(dues):
                done.set()

        offset = time.time() - loop.time()
        for due in dues:
            loop.call_at(due - offset, fire, due)
        await done.wait()
        return late

    results.put(asyncio.run(main()))


class Receiver:
    """A bare MQTT 3.1.1 subscriber on a socket: a thread stamps each chunk it reads, packets are parsed afterwards.

    The thread does nothing but ``recv`` and append, so it reads far faster than
    a broker delivers; a decoding subscriber (paho: about 35k messages/s here)
    would itself be the bottleneck of a 10,000-command second.  Every message
    in a chunk gets the chunk's arrival time.
    """

    def __init__(self, broker: Mosquitto, topics: Topics) -> None:
        self.chunks: list[tuple[float, bytes]] = []
        self.sock = socket.create_connection((broker.host, broker.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # keepalive 0: the broker expects no pings during the measurement
        self.sock.sendall(packets.connect(f"bench-rx-{uuid.uuid4().hex[:6]}", clean_session=True, keepalive=0))
        # packet id 1, one filter at QoS 0
        self.sock.sendall(packets.subscribe(1, [(f"{topics.root}/+/set/{Command.SWITCH.value}", 0)]))
        answer = b""
        while len(answer) < 9:  # CONNACK (4 bytes) and SUBACK (5 bytes)
            answer += self.sock.recv(9 - len(answer))
        if answer[:2] != b"\x20\x02" or answer[3] != 0 or answer[4] != 0x90 or answer[8] != 0:
            raise SystemExit(f"the receiver could not subscribe: {answer.hex()}")
        self.sock.settimeout(None)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while data := self.sock.recv(1 << 20):
            self.chunks.append((time.time(), data))

    def stop(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)
        self.sock.close()

    def arrivals(self) -> list[tuple[float, str, str]]:
        """(arrival, node, run_id) of every switch command, in order."""
        out = []
        buf = bytearray()
        for stamp, data in self.chunks:
            buf += data
            pos = 0
            while pos + 2 <= len(buf):
                length, shift, at = 0, 0, pos + 1
                while at < len(buf) and buf[at] & 0x80:
                    length |= (buf[at] & 0x7F) << shift
                    shift, at = shift + 7, at + 1
                if at >= len(buf) or at + 1 + (length | buf[at] << shift) > len(buf):
                    break
                length |= buf[at] << shift
                body = bytes(buf[at + 1:at + 1 + length])
                if buf[pos] >> 4 == 3:  # PUBLISH at QoS 0: topic length, topic, payload
                    size = struct.unpack_from(">H", body)[0]
                    topic = body[2:2 + size].decode()
                    out.append((stamp, topic.split("/")[-3], json.loads(body[2 + size:]).get("run_id", "")))
                pos = at + 1 + length
            del buf[:pos]
        return out


def publish_fleet(broker: Mosquitto, topics: Topics, nodes: list[tuple[str, int, int, str]]) -> float:
    """Retain every stand-in node's config, schedule, status and state; seconds it took."""
    started = time.time()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(1000)
    client.connect(broker.host, broker.port)
    client.loop_start()
    last = None
    for name, _, offset, at in nodes:
        config = {"v": 1, "version": 1, "tz": [{"from": 0, "offset": offset}]}
        schedule = {"v": 1, "version": 1, "rules": [{"id": "water", "at": at, "duration": DURATION}]}
        state = {"v": 1, "seq": 1, "relay": "OFF", "mode": "auto", "time_valid": True}
        client.publish(topics.config(name), json.dumps(config), qos=1, retain=True)
        client.publish(topics.status(name), "online", qos=1, retain=True)
        client.publish(topics.state(name), json.dumps(state), qos=1, retain=True)
        last = client.publish(topics.schedule(name), json.dumps(schedule), qos=1, retain=True)
    last.wait_for_publish(120)
    client.loop_stop()
    client.disconnect()
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10,000 nodes, one minute (the default sizes)")
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--spread", type=int, default=60, help="Seconds of the minute the starts are spread over (1-60)")
    parser.add_argument("--lead", type=float, default=30.0, help="Seconds from publishing to the first run")
    args = parser.parse_args()
    spread = max(1, min(60, args.spread))

    workdir = Path(tempfile.mkdtemp(prefix="nodefleet-bench-sched-"))
    postgres = EmbeddedPostgres(workdir / "pg", port=free_port(), password=secrets.token_urlsafe(16), settings={"fsync": "off"})
    scheduler = None
    try:
        with Mosquitto() as broker:
            postgres.start()
            postgres.create_database("bench")
            topics = Topics(root=f"b{uuid.uuid4().hex[:6]}/home", fleet=f"b{uuid.uuid4().hex[:6]}/fleet")
            env = {**os.environ, "NODEFLEET_MQTT_URL": broker.url, "NODEFLEET_DATABASE_URL": postgres.dsn("bench"),
                   "NODEFLEET_TOPIC_ROOT": topics.root, "NODEFLEET_FLEET_ROOT": topics.fleet,
                   "NODEFLEET_INSTANCE": "bench", "NODEFLEET_SCHEDULER_GRACE": str(GRACE),
                   "NODEFLEET_LOG_LEVEL": os.environ.get("BENCH_SCHEDULER_LOG", "warning"), "NODEFLEET_LOG_FORMAT": "json"}
            scheduler = subprocess.Popen([sys.executable, "-m", "services.scheduler"], cwd=ROOT, env=env,
                                         stdout=subprocess.DEVNULL, stderr=(workdir / "scheduler.log").open("w"))
            time.sleep(3)  # the scheduler connects, migrates and settles on an empty fleet
            receiver = Receiver(broker, topics)
            first = int(time.time() + args.lead)
            nodes = plan(args.nodes, first, spread)
            took = publish_fleet(broker, topics, nodes)
            _say(f"published {len(nodes)} stand-in nodes (config, status, state, schedule) in {took:.1f} s; "
                 f"first run at +{first - time.time():.1f} s")
            if time.time() > first - 5:
                raise SystemExit("publishing took too long for --lead: raise --lead")
            dues = [start + GRACE for _, start, _, _ in nodes]
            results = SPAWN.Queue()
            base = SPAWN.Process(target=baseline, args=(dues, results))
            base.start()
            end = max(dues) + 5
            while time.time() < end:
                time.sleep(0.5)
            base_late = results.get(timeout=30)
            base.join()
            receiver.stop()
            if scheduler.poll() is not None:
                raise SystemExit(f"the scheduler exited: see {workdir / 'scheduler.log'}")

            due_of = {name: start + GRACE for name, start, _, _ in nodes}
            counts: dict[tuple[str, str], int] = {}
            late = []
            for arrived, node, run_id in receiver.arrivals():
                counts[(node, run_id)] = counts.get((node, run_id), 0) + 1
                if counts[(node, run_id)] == 1 and node in due_of:
                    late.append((arrived - due_of[node]) * 1000)
            commanded = {node for node, _ in counts}
            result = {
                "nodes": args.nodes,
                "spread_s": spread,
                "grace_s": GRACE,
                "p50_lateness_ms": round(statistics.median(late), 2) if late else None,
                "p99_lateness_ms": round(_pct(late, 0.99), 2) if late else None,
                "baseline_p99_ms": round(_pct(base_late, 0.99), 2),
                # Every command arrived within this long after its own due time plus grace.
                "all_sent_within_ms": round(max(late), 2) if late else None,
                "double_fires": sum(n - 1 for n in counts.values()),
                "missed": sum(1 for name, _, _, _ in nodes if name not in commanded),
            }
            _say(f"lateness after due+grace: p50 {result['p50_lateness_ms']} ms, p99 {result['p99_lateness_ms']} ms, "
                 f"max {result['all_sent_within_ms']} ms; asyncio call_at baseline p99 {result['baseline_p99_ms']} ms")
            print(json.dumps(result), flush=True)
    finally:
        stop_process(scheduler)
        postgres.stop("immediate")
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

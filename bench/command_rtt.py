"""Command round trip: switch commands with ids to one node on the real MicroPython interpreter.

Time from publish to ack, one command at a time, against a Mosquitto started
here on loopback.  The baseline in the same run is a bare paho echo client on
the same broker, answering on the same topic shapes, measured by the same
client: the ratio holds on a noisy machine where absolute times do not.

    python -m bench.command_rtt --quick      # 1,000 commands
    python -m bench.command_rtt --count 5000

The last line printed is JSON: p50_ms, p99_ms, baseline_p50_ms, baseline_p99_ms, ratio_p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

from nodefleet.contracts import Topics
from nodefleet.contracts.topics import Command
from nodefleet.embedded.mosquitto import Mosquitto
from nodefleet.sim import SimNode

WARMUP = 50
HEAP_NOTE = "-X heapsize=110K"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _client(broker: Mosquitto, name: str) -> paho.Client:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"{name}-{time.time_ns()}",
                         protocol=paho.MQTTv311, clean_session=True)
    client.connect(broker.host, broker.port, keepalive=60)
    # paho leaves Nagle on: a publish after an unacknowledged PUBACK would wait ~40 ms for a delayed ACK.
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


class Pinger:
    """Publishes one message with an id and waits for the answer carrying the same id."""

    def __init__(self, broker: Mosquitto, reply_topics: list[str]) -> None:
        self._expect: str | None = None
        self._answered = threading.Event()
        self._subscribed = threading.Event()
        self.client = _client(broker, "rtt")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.loop_start()
        self.client.subscribe([(topic, 1) for topic in reply_topics])
        if not self._subscribed.wait(5):
            raise RuntimeError("the broker did not confirm the subscription")

    def _on_message(self, client, userdata, message) -> None:
        try:
            if json.loads(message.payload).get("id") == self._expect:
                self._answered.set()
        except ValueError:
            pass

    def roundtrip(self, topic: str, payload: dict, *, timeout: float = 5.0) -> float | None:
        self._expect = payload["id"]
        self._answered.clear()
        started = time.perf_counter()
        self.client.publish(topic, json.dumps(payload), qos=1)
        if not self._answered.wait(timeout):
            return None
        return time.perf_counter() - started

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def start_echo(broker: Mosquitto, listen: str, answer: str) -> paho.Client:
    """The baseline: a bare paho client that acks every command at once."""
    echo = _client(broker, "echo")

    def on_message(client, userdata, message) -> None:
        command = json.loads(message.payload)
        client.publish(answer, json.dumps({"v": 1, "id": command["id"], "status": "ok"}), qos=1)

    echo.on_message = on_message
    echo.subscribe(listen, qos=1)
    echo.loop_start()
    return echo


def series(pinger: Pinger, topic: str, count: int, prefix: str) -> tuple[list[float], int]:
    times: list[float] = []
    lost = 0
    for i in range(WARMUP + count):
        rtt = pinger.roundtrip(topic, {"state": "ON" if i % 2 else "OFF", "id": f"{prefix}{i}"})
        if rtt is None:
            lost += 1
        elif i >= WARMUP:
            times.append(rtt)
    return times, lost


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def start_node(broker: Mosquitto, topics: Topics, workdir: Path) -> SimNode:
    node = SimNode(workdir / "rtt-node", name="rtt-node", control=True, http=False)
    node.provision(broker=broker.url, topic_prefix=topics.prefix("rtt-node"))
    node.write("config.json", {"v": 1, "version": 1, "telemetry_period": 60})
    await node.start()
    return node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 commands")
    parser.add_argument("--count", type=int, default=5000)
    args = parser.parse_args()
    count = 1000 if args.quick else args.count
    topics = Topics(root="bench")
    loop = asyncio.new_event_loop()
    # Mosquitto() sets TCP_NODELAY, as the deploy config does (else ~40 ms delayed ACKs).
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="nodefleet-rtt-") as tmp:
        node = loop.run_until_complete(start_node(broker, topics, Path(tmp)))
        pinger = Pinger(broker, [topics.ack("rtt-node"), topics.ack("echo")])
        echo = start_echo(broker, topics.set("echo", Command.SWITCH), topics.ack("echo"))
        try:
            deadline = time.monotonic() + 20
            while pinger.roundtrip(topics.set("rtt-node", Command.SWITCH), {"state": "OFF", "id": "hello"}, timeout=1) is None:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the node did not answer; its output:\n{node.output()}")
            _say(f"node up; {count} commands each to the node and to the paho echo baseline")
            base, base_lost = series(pinger, topics.set("echo", Command.SWITCH), count, "e")
            ours, ours_lost = series(pinger, topics.set("rtt-node", Command.SWITCH), count, "n")
            time.sleep(1.1)  # the node's heap sampler collects once a second
            board = loop.run_until_complete(node.ctl())
        finally:
            pinger.close()
            echo.loop_stop()
            echo.disconnect()
            loop.run_until_complete(node.stop())
            loop.close()
    if not ours or not base:
        raise SystemExit("no answers measured")
    figures = {
        "p50_ms": round(percentile(ours, 0.50) * 1000, 3),
        "p99_ms": round(percentile(ours, 0.99) * 1000, 3),
        "baseline_p50_ms": round(percentile(base, 0.50) * 1000, 3),
        "baseline_p99_ms": round(percentile(base, 0.99) * 1000, 3),
    }
    figures["ratio_p99"] = round(figures["p99_ms"] / figures["baseline_p99_ms"], 2)
    _say(f"node: {len(ours)} acks, {ours_lost} lost, max {max(ours) * 1000:.1f} ms; "
         f"baseline: {len(base)} answers, {base_lost} lost, max {max(base) * 1000:.1f} ms; "
         f"node heap ({HEAP_NOTE}): live peak {board['heap_live_peak']} B, free now {board['heap_free']} B")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

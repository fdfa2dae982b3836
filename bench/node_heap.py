"""Node heap under a storm of incoming messages of every size, on the real MicroPython interpreter.

One node runs the real firmware with ``-X heapsize=110K`` (an ESP32-sized
heap) against a Mosquitto on loopback.  Baseline in the same run: the same
node idle for a few seconds.  Then a storm: on every topic the node subscribes
to (``set/#``, ``config``, ``schedule``, ``ota/#``), one message of every size
from 0 bytes to past the node's 4 KB limit (``--quick``: every 7th size, plus
the sizes around the limit), paced by a command round trip every 50 messages.
A firmware without ``heap_min`` (an older one, ``--firmware``) is measured by
its ``heap_free``, taken without a collection.  The node runs as deployed (web server on, no simulator control channel) and
reports its free heap and its low-water mark (``heap_min``: the least heap
free after a collection since boot, sampled every 250 ms and after every
message of 256 bytes or more) in its telemetry every second.

    python -m bench.node_heap --quick

The last line printed is JSON: heap_size, limit, messages, idle_heap_min,
storm_heap_min, ratio (storm / idle low-water),
disconnects, unanswered (pacing commands never acked), restarts, storm_s.  Goal: storm_heap_min >= 20,480 bytes and no
disconnect.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from nodefleet import mqtt
from nodefleet.contracts import Topics
from nodefleet.contracts.topics import Command
from nodefleet.embedded.mosquitto import Mosquitto
from nodefleet.sim import FIRMWARE_DIR, HEAP, SimNode

LIMIT = 4096  # the node's largest incoming payload (firmware/normal.py MAX_IN)
PAST = 1024
PACE = 50


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def storm_topics(topics: Topics, node: str) -> list[str]:
    """One concrete topic under each filter the node subscribes to."""
    out = []
    for f in topics.node_inbox(node):
        out.append("/".join("storm" if level in ("#", "+") else level for level in f.split("/")))
    out.append(topics.set(node, Command.SWITCH))
    return out


def sizes(*, quick: bool, limit: int = LIMIT) -> list[int]:
    every = range(0, limit + PAST + 1, 7 if quick else 1)
    return sorted(set(every) | {limit - 1, limit, limit + 1, limit + 2, limit + PAST})


def payload(size: int, n: int) -> bytes:
    """``size`` bytes of JSON-shaped text (an object with an id and padding), or filler when too short."""
    head = b'{"v": 1, "id": "h%d", "state": "ON", "pad": "' % n
    if size < len(head) + 2:
        return b"x" * size
    return head + b"p" * (size - len(head) - 2) + b'"}'


class Watcher:
    """Everything the node publishes: telemetry (heap figures), status changes, acks."""

    def __init__(self, client: Any, topics: Topics, node: str) -> None:
        self.client = client
        self.topics = topics
        self.node = node
        self.telemetry: list[dict[str, Any]] = []
        self.offline = 0
        self.unanswered = 0
        self.acks: dict[str, dict[str, Any]] = {}
        self._ack = asyncio.Event()

    async def feed(self) -> None:
        async for message in self.client.messages:
            topic, body = str(message.topic), bytes(message.payload)
            if topic == self.topics.telemetry(self.node):
                self.telemetry.append(json.loads(body))
            elif topic == self.topics.status(self.node):
                self.offline += body == b"offline"
            elif topic == self.topics.ack(self.node):
                ack = json.loads(body)
                self.acks[ack["id"]] = ack
                self._ack.set()

    async def roundtrip(self, timeout: float = 5.0, tries: int = 4) -> bool:
        """A command with an id, answered: the node has handled everything sent before it."""
        for _ in range(tries):
            cid = f"rt{uuid.uuid4().hex[:8]}"
            await self.client.publish(self.topics.set(self.node, Command.LOGIC),
                                      json.dumps({"enabled": True, "id": cid}), qos=1)
            try:
                async with asyncio.timeout(timeout):
                    while cid not in self.acks:
                        self._ack.clear()
                        await self._ack.wait()
                return True
            except TimeoutError:
                self.unanswered += 1
        raise RuntimeError("the node stopped answering commands")

    def low_water(self, since: int = 0) -> int | None:
        values = [t["readings"].get("heap_min", t["readings"].get("heap_free")) for t in self.telemetry[since:]]
        values = [v for v in values if v is not None]
        return min(values) if values else None


async def storm(watch: Watcher, *, quick: bool, limit: int = LIMIT) -> int:
    """Publish every size on every inbox topic (QoS 1, not retained); returns how many were sent."""
    sent = 0
    for topic in storm_topics(watch.topics, watch.node):
        for size in sizes(quick=quick, limit=limit):
            await watch.client.publish(topic, payload(size, sent), qos=1)
            sent += 1
            if sent % PACE == 0:
                await watch.roundtrip()  # the node has handled everything before this
        _say(f"storm: {topic} done, {sent} messages so far")
    await watch.roundtrip()
    return sent


async def run(*, quick: bool, heap: str = HEAP, workdir: Path, broker: Mosquitto,
              firmware: Path = FIRMWARE_DIR) -> dict[str, Any]:
    topics = Topics(root=f"bench{uuid.uuid4().hex[:6]}")
    name = "heap-node"
    # As deployed: with its web server, without the simulator's control channel (test instrumentation).
    node = SimNode(workdir / name, name=name, heap=heap, control=False, http=True, firmware_dir=firmware)
    node.provision(broker=broker.url, topic_prefix=topics.prefix(name), keepalive=10, max_backoff=1)
    node.write("config.json", {"v": 1, "version": 1, "telemetry_period": 1})
    client = mqtt.client(mqtt.BrokerAddress.parse(broker.url), client_id=f"heap-{uuid.uuid4().hex[:8]}", nodelay=True)
    async with client:
        watch = Watcher(client, topics, name)
        await client.subscribe(f"{topics.prefix(name)}/#", qos=1)
        feeder = asyncio.create_task(watch.feed())
        try:
            await node.start()
            async with asyncio.timeout(20):
                while not watch.telemetry:
                    await asyncio.sleep(0.1)
            await asyncio.sleep(5)  # baseline: idle, telemetry every second
            idle = watch.low_water()
            mark = len(watch.telemetry)
            offline_before = watch.offline
            started = time.monotonic()
            sent = await storm(watch, quick=quick)
            took = time.monotonic() - started
            await asyncio.sleep(2.5)  # the telemetry of the last second of the storm
            return {
                "heap_size": heap,
                "limit": LIMIT,
                "messages": sent,
                "idle_heap_min": idle,
                "storm_heap_min": watch.low_water(mark),
                "disconnects": watch.offline - offline_before,
                "unanswered": watch.unanswered,
                "restarts": node.restarts + (0 if node.running else 1),
                "storm_s": round(took, 1),
                "output": node.output()[-2000:],
            }
        finally:
            await node.stop()
            feeder.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every 7th size instead of every size")
    parser.add_argument("--heap", default=HEAP, help="the interpreter's heap (default %(default)s)")
    parser.add_argument("--firmware", type=Path, default=FIRMWARE_DIR,
                        help="another firmware tree, e.g. an older commit's (git archive), to compare")
    args = parser.parse_args()
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="nodefleet-heap-") as tmp:
        figures = asyncio.run(run(quick=args.quick, heap=args.heap, workdir=Path(tmp), broker=broker,
                                  firmware=args.firmware))
    output = figures.pop("output")
    if figures["restarts"] or "Traceback" in output:
        _say("node output:\n" + output)
    idle, low = figures["idle_heap_min"], figures["storm_heap_min"]
    figures["ratio"] = round(low / idle, 3) if idle and low else None
    _say(f"{figures['messages']} messages in {figures['storm_s']} s; low-water idle {idle} B, "
         f"under the storm {low} B; {figures['disconnects']} disconnects, {figures['restarts']} restarts")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

"""Node heap under a storm of incoming messages of every size, on the real MicroPython interpreter.

One node runs the real firmware with ``-X heapsize=110K`` (an ESP32-sized
heap) against a Mosquitto on loopback.  Baseline in the same run: the same
node idle for a few seconds.  Then a storm: on every topic the node subscribes
to (``set/#``, ``config``, ``schedule``, ``ota/offer``, ``ota/data``), one message of every size
from 0 bytes to past the node's 4 KB limit (``--quick``: every 7th size, plus
the sizes around the limit), paced by a command round trip every 50 messages.
A firmware without ``heap_min`` (an older one, ``--firmware``) is measured by
its ``heap_free``, taken without a collection.  The node runs as deployed (web server on, no simulator control channel) and
reports its free heap and its low-water mark (``heap_min``: the least heap
free after a collection since boot, sampled every 250 ms and after every
message of 256 bytes or more) in its telemetry every second.

Then an OTA download (``--no-ota`` skips it): a release of about 1 MiB
(today's firmware and a filler module) offered to the node, sent the way
the ota service sends it (``services.ota.stream``: credit, shared stream and
repairs); the node restarts into its download mode, downloads and verifies
it.  ``ota_heap_min`` is the least ``heap_min`` the node reported from the
download mode's first telemetry to ``verified``.  Then the relay goes off: the
node installs, reboots into the new firmware's trial and confirms it;
``trial_heap_min`` is that boot's low-water mark, from its first telemetry
after ``updated``.

    python -m bench.node_heap --quick

The last line printed is JSON: heap_size, limit, messages, idle_heap_min,
storm_heap_min, ratio (storm / idle low-water),
disconnects, unanswered (pacing commands never acked), restarts, storm_s,
and ota_size, ota_heap_min, ota_s (offer to verified), ota_bad (frames the
node refused), ota_result, trial_heap_min.  Goal: storm_heap_min, ota_heap_min and trial_heap_min
>= 20,480 bytes, no disconnect.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from nodefleet import wire
from nodefleet.contracts import Topics
from nodefleet.contracts.ota import Want, device_key
from nodefleet.contracts.topics import Command, OtaTopic
from nodefleet.embedded.mosquitto import Mosquitto
from nodefleet.ota_release import Release, build
from nodefleet.sim import FIRMWARE_DIR, HEAP, SimNode
from services.ota.stream import Stream

LIMIT = 4096  # the node's largest incoming payload (firmware/normal.py MAX_IN)
PAST = 1024
PACE = 50
OTA_SIZE = 1024 * 1024  # the release's size, about: an ESP32 app partition holds 1.5 MiB (hal/simslot.py)
OTA_MASTER = b"bench-node-heap-master-key"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def storm_topics(topics: Topics, node: str) -> list[str]:
    """One concrete topic under each filter the node subscribes to in normal mode (firmware/normal.py)."""
    prefix = topics.prefix(node)
    subs = [f"{prefix}/set/#", topics.config(node), topics.schedule(node), *topics.node_ota_inbox(node)]
    out = ["/".join("storm" if level in ("#", "+") else level for level in f.split("/")) for f in subs]
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

    def __init__(self, client: wire.Client, topics: Topics, node: str) -> None:
        self.client = client
        self.topics = topics
        self.node = node
        self.telemetry: list[dict[str, Any]] = []
        self.offline = 0
        self.unanswered = 0
        self.acks: dict[str, dict[str, Any]] = {}
        self._ack = asyncio.Event()
        self.states: list[dict[str, Any]] = []
        self.progress: list[tuple[int, dict[str, Any]]] = []
        """(telemetry messages seen before it, progress)."""
        self.on_want: Any = None

    async def feed(self) -> None:
        async for message in self.client.messages:
            topic, body = message.topic, message.payload
            if topic == self.topics.telemetry(self.node):
                self.telemetry.append(json.loads(body))
            elif topic == self.topics.status(self.node):
                self.offline += body == b"offline"
            elif topic == self.topics.ack(self.node):
                ack = json.loads(body)
                self.acks[ack["id"]] = ack
                self._ack.set()
            elif topic == self.topics.state(self.node):
                self.states.append(json.loads(body))
            elif topic == self.topics.ota(self.node, OtaTopic.PROGRESS):
                self.progress.append((len(self.telemetry), json.loads(body)))
            elif topic == self.topics.ota(self.node, OtaTopic.WANT) and self.on_want is not None:
                await self.on_want(Want.model_validate_json(bytes(body)))

    async def roundtrip(self, timeout: float = 5.0, tries: int = 4, command: Command = Command.LOGIC,
                        body: dict[str, Any] | None = None) -> bool:
        """A command with an id, answered: the node has handled everything sent before it."""
        for _ in range(tries):
            cid = f"rt{uuid.uuid4().hex[:8]}"
            await self.client.publish(self.topics.set(self.node, command),
                                      json.dumps({**(body or {"enabled": True}), "id": cid}), qos=1)
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


def big_release(workdir: Path, size: int = OTA_SIZE) -> Release:
    """Today's firmware and a filler module of random text, about ``size`` bytes in all."""
    src = workdir / "ota-firmware"
    shutil.copytree(FIRMWARE_DIR, src, ignore=shutil.ignore_patterns("__pycache__", "build"))
    rng = random.Random(7)
    # Strings of 4 KB: mpy-cross has no room for one of 1 MB.
    parts = [base64.b64encode(rng.randbytes(3072)).decode() for _ in range(size // 4096)]
    (src / "filler.py").write_text("DATA = (\n" + "".join(f'    "{p}",\n' for p in parts) + ")\n")
    return build(src, version="9.9.0", target="unix")


class Sender:
    """The ota service's side of one download: the node's wants in, what ``Stream`` schedules out."""

    def __init__(self, client: wire.Client, topics: Topics, node: str, release: Release) -> None:
        self.client = client
        self.topics = topics
        self.node = node
        self.release = release
        m = release.manifest
        self.stream_topic = topics.ota_stream(m.version)
        self.stream = Stream(m.version, table=release.units() - len(m.blocks), blocks=len(m.blocks))
        self.sent = 0
        self._lock = asyncio.Lock()

    async def offer(self) -> None:
        offer = self.release.manifest.offer(node=self.node, key=device_key(OTA_MASTER, self.node),
                                            stream=self.stream_topic)
        await self.client.publish(self.topics.ota(self.node, OtaTopic.OFFER), offer.model_dump_json(),
                                  qos=1, retain=True)

    async def withdraw(self) -> None:
        await self.client.publish(self.topics.ota(self.node, OtaTopic.OFFER), b"", qos=1, retain=True)

    async def want(self, want: Want) -> None:
        self.stream.want(self.node, want, now=asyncio.get_running_loop().time())
        await self.pump()

    async def pump(self) -> None:
        async with self._lock:
            while (send := self.stream.next(now=asyncio.get_running_loop().time())) is not None:
                topic = self.stream_topic if send.to is None else self.topics.ota(send.to, OtaTopic.DATA)
                await self.client.publish(topic, self.release.frame(send.unit), qos=0)
                self.sent += 1

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            await self.pump()


async def _progress(watch: Watcher, mark: int, states: tuple[str, ...], timeout: float) -> str:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                for _, p in watch.progress[mark:]:
                    if p["state"] in states:
                        return p["state"]
                await asyncio.sleep(0.1)
    return "timeout"


async def _trial_heap(watch: Watcher, mark: int, timeout: float = 10) -> int | None:
    """The new firmware's low-water mark since its trial boot, from its first telemetry after ``updated`` (normal
    mode's: with sensors). Its trial, self-test and report are all behind that mark."""
    done = next(i for i, (_, p) in enumerate(watch.progress[mark:]) if p["state"] == "updated")
    since = watch.progress[mark + done][0]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                for t in watch.telemetry[since:]:
                    if "temperature" in t["readings"] and t["readings"].get("heap_min") is not None:
                        return t["readings"]["heap_min"]
                await asyncio.sleep(0.1)
    return None


async def download(watch: Watcher, release: Release, *, timeout: float = 120) -> dict[str, Any]:
    """Offer ``release`` with the relay on, so the node waits after ``verified`` (not idle) and its download mode
    reports telemetry: its low-water heap from its boot to then. Then the relay off: install, trial, ``updated``."""
    await watch.roundtrip(command=Command.SWITCH, body={"state": "ON"})
    sender = Sender(watch.client, watch.topics, watch.node, release)
    watch.on_want = sender.want
    ticker = asyncio.create_task(sender.tick())
    mark, states_mark = len(watch.progress), len(watch.states)
    started = time.monotonic()
    try:
        await sender.offer()
        state = await _progress(watch, mark, ("verified", "failed"), timeout)
        took = time.monotonic() - started
        seen = watch.progress[mark:]
        # Telemetry before the first progress is normal mode's; after it, the download mode's (no sensors).
        first = seen[0][0] if seen else len(watch.telemetry)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while len(watch.telemetry) < first + 2:
                    await asyncio.sleep(0.1)
        low = [t["readings"]["heap_min"] for t in watch.telemetry[first:]
               if t["readings"].get("heap_min") is not None and "temperature" not in t["readings"]]
        relay_kept = all(st["relay"] == "ON" for st in watch.states[states_mark:])
        figures = {
            "ota_size": release.manifest.size,
            "ota_state": state,
            "ota_heap_min": min(low) if low else None,
            "ota_s": round(took, 1),
            "ota_bad": max((p.get("bad", 0) for _, p in seen), default=0),
            "ota_frames_sent": sender.sent,
            "ota_relay_kept": relay_kept and bool(watch.states[states_mark:]),
        }
        if state == "verified":
            await watch.roundtrip(command=Command.SWITCH, body={"state": "OFF"})  # idle now: it installs
            figures["ota_result"] = await _progress(watch, mark, ("updated", "rolled_back", "failed"), 60)
            figures["ota_updated_s"] = round(time.monotonic() - started, 1)
            figures["trial_heap_min"] = await _trial_heap(watch, mark) if figures["ota_result"] == "updated" else None
        return figures
    finally:
        ticker.cancel()
        watch.on_want = None
        await sender.withdraw()


async def run(*, quick: bool, heap: str = HEAP, workdir: Path, broker: Mosquitto,
              firmware: Path = FIRMWARE_DIR, ota: bool = False) -> dict[str, Any]:
    topics = Topics(root=f"bench{uuid.uuid4().hex[:6]}")
    name = "heap-node"
    release = big_release(workdir) if ota else None
    # As deployed: with its web server, without the simulator's control channel (test instrumentation).
    node = SimNode(workdir / name, name=name, heap=heap, control=False, http=True, firmware_dir=firmware)
    node.provision(broker=broker.url, topic_prefix=topics.prefix(name), keepalive=10, max_backoff=1)
    node.write("mqtt.json", {**node.read("mqtt.json"), "ota_key": device_key(OTA_MASTER, name).hex()})
    node.write("config.json", {"v": 1, "version": 1, "telemetry_period": 1})
    client = wire.Client(wire.BrokerAddress.parse(broker.url), client_id=f"heap-{uuid.uuid4().hex[:8]}", nodelay=True)
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
            figures = {
                "heap_size": heap,
                "limit": LIMIT,
                "messages": sent,
                "idle_heap_min": idle,
                "storm_heap_min": watch.low_water(mark),
                "disconnects": watch.offline - offline_before,
                "unanswered": watch.unanswered,
                "restarts": node.restarts + (0 if node.running else 1),
                "storm_s": round(took, 1),
            }
            if release is not None:
                figures.update(await download(watch, release))
            figures["output"] = node.output()[-2000:]
            return figures
        finally:
            await node.stop()
            feeder.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every 7th size instead of every size")
    parser.add_argument("--heap", default=HEAP, help="the interpreter's heap (default %(default)s)")
    parser.add_argument("--firmware", type=Path, default=FIRMWARE_DIR,
                        help="another firmware tree, e.g. an older commit's (git archive), to compare")
    parser.add_argument("--no-ota", action="store_true",
                        help="skip the download (a firmware without the download mode, e.g. main's)")
    args = parser.parse_args()
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="nodefleet-heap-") as tmp:
        figures = asyncio.run(run(quick=args.quick, heap=args.heap, workdir=Path(tmp), broker=broker,
                                  firmware=args.firmware, ota=not args.no_ota))
    output = figures.pop("output")
    if "Traceback" in output:
        _say("node output:\n" + output)
    idle, low = figures["idle_heap_min"], figures["storm_heap_min"]
    figures["ratio"] = round(low / idle, 3) if idle and low else None
    _say(f"{figures['messages']} messages in {figures['storm_s']} s; low-water idle {idle} B, "
         f"under the storm {low} B; {figures['disconnects']} disconnects, {figures['restarts']} restarts")
    if "ota_size" in figures:
        _say(f"download of {figures['ota_size']} bytes: {figures['ota_state']} after {figures['ota_s']} s, "
             f"low-water {figures['ota_heap_min']} B, {figures['ota_bad']} frames refused")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

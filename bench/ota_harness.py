"""The pieces bench.ota runs: a ~1 MiB release, the services as processes, the delay proxy, and a tap on the broker.

Everything listens on and talks to 127.0.0.1 only.  The services and the tap
connect to Mosquitto directly; the nodes connect through the delay proxy (the
provisioner hands out the proxy's port as the broker's).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodefleet import wire
from nodefleet.contracts import NodeTopic, Topics
from nodefleet.contracts.ota import FRAME_HEADER_SIZE, Want, bitmap_bits
from nodefleet.contracts.topics import OtaTopic, TopicError
from nodefleet.fleet import Requester
from nodefleet.ota_release import Release, build
from nodefleet.processes import stop_process
from nodefleet.sim import FIRMWARE_DIR

ROOT = Path(__file__).resolve().parents[1]
FILLER_STRING = 4096  # characters per string of the filler module: mpy-cross has no room for one of 1 MiB
FILLER_COST = FILLER_STRING + 4  # what one such string adds to the compiled module, about


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def big_release(workdir: Path, *, size: int, version: str) -> Release:
    """Today's firmware (unix target) plus ``filler.py`` (random text, never imported) to make ``size`` bytes, about."""
    base = build(FIRMWARE_DIR, version=version, target="unix").manifest.size
    src = workdir / "ota-firmware"
    shutil.copytree(FIRMWARE_DIR, src, ignore=shutil.ignore_patterns("__pycache__", "build"))
    rng = random.Random(12)
    strings = max(0, (size - base) // FILLER_COST)
    parts = [base64.b64encode(rng.randbytes(FILLER_STRING * 3 // 4)).decode() for _ in range(strings)]
    (src / "filler.py").write_text("DATA = (\n" + "".join(f'    "{p}",\n' for p in parts) + ")\n")
    return build(src, version=version, target="unix")


def firmware_window() -> int:
    """The window the receiver uses when mqtt.json sets none (``ota_window`` in firmware/otarx.py)."""
    import re

    found = re.search(r'"ota_window",\s*(\d+)', (FIRMWARE_DIR / "otarx.py").read_text())
    return int(found.group(1)) if found else 8


class ServiceProcess:
    """``python -m <module>`` as deployed: its own process, settings from NODEFLEET_* variables, JSON logs."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path, ready: str) -> None:
        self.module, self.log_path, self.ready = module, log_path, ready
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", module], env={**os.environ, **env}, cwd=ROOT,
                                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.ready.encode() not in self.log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.module} did not start: {self.log_path.read_text()[-2000:]}")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.process, 10)


class ProxyProcess:
    """bench.delay_proxy in its own process, so its forwarding does not share the benchmark's event loop."""

    def __init__(self, upstream_port: int, *, rtt: float, max_seconds: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.delay_proxy", "--upstream", f"127.0.0.1:{upstream_port}", "--rtt",
             str(rtt), "--max-seconds", str(max_seconds)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())
        self.counts: dict[str, int] = {}

    def stop(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        try:
            self.process.wait(10)
            line = self.process.stdout.read().decode().strip().splitlines()
            self.counts = json.loads(line[-1]) if line else {}
        except (subprocess.TimeoutExpired, ValueError):
            stop_process(self.process, 5)


@dataclass
class FrameSeen:
    t: float
    to: str | None
    """None: the shared stream; a node: its repair topic."""
    unit: int
    size: int


@dataclass
class Tap:
    """One connection to Mosquitto (not through the proxy): every frame the service publishes, the nodes'
    wants, progress, telemetry and status, each stamped on arrival; and the operator's requests."""

    client: wire.Client
    topics: Topics
    table: int
    """Table chunks of the release: the unit of a block frame is table + index."""
    requester: Requester | None = None
    frames: list[FrameSeen] = field(default_factory=list)
    wants: dict[str, list[tuple[float, Want]]] = field(default_factory=lambda: defaultdict(list))
    progress: dict[str, list[tuple[float, dict[str, Any]]]] = field(default_factory=lambda: defaultdict(list))
    telemetry: dict[str, list[tuple[float, dict[str, Any]]]] = field(default_factory=lambda: defaultdict(list))
    status: dict[str, str] = field(default_factory=dict)
    offers: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    """When each node's offer (retained, non-empty) was published."""
    on_frame: Callable[[FrameSeen], None] | None = None

    async def start(self) -> None:
        self.requester = Requester(self.client, self.topics, client_id=self.client.client_id)
        await self.requester.start()
        await self.client.subscribe(self.topics.ota_streams(), qos=0)
        await self.client.subscribe(self.topics.all_ota(OtaTopic.DATA), qos=0)
        await self.client.subscribe(self.topics.all_ota(OtaTopic.WANT), qos=0)
        await self.client.subscribe(self.topics.all_ota(OtaTopic.PROGRESS), qos=1)
        await self.client.subscribe(self.topics.all_ota(OtaTopic.OFFER), qos=1)
        await self.client.subscribe(self.topics.all_nodes(NodeTopic.TELEMETRY), qos=0)
        await self.client.subscribe(self.topics.all_nodes(NodeTopic.STATUS), qos=1)

    async def request(self, service: str, action: str, data: dict[str, Any], timeout: float = 30.0) -> Any:
        assert self.requester is not None
        return await self.requester.request(service, action, data, timeout=timeout)

    async def feed(self) -> None:
        async for message in self.client.messages:
            now = time.monotonic()
            assert self.requester is not None
            if self.requester.feed(message):
                continue
            if message.topic.startswith(self.topics.fleet):
                self._frame(now, None, message.payload)
                continue
            try:
                parsed = self.topics.parse(message.topic)
            except TopicError:
                continue
            node = parsed.node
            if parsed.ota == OtaTopic.DATA:
                self._frame(now, node, message.payload)
            elif parsed.ota == OtaTopic.WANT:
                self.wants[node].append((now, Want.model_validate_json(message.payload)))
            elif parsed.ota == OtaTopic.OFFER:
                if message.payload:
                    self.offers[node].append(now)
            elif parsed.ota == OtaTopic.PROGRESS:
                self.progress[node].append((now, json.loads(message.payload)))
            elif parsed.kind == NodeTopic.TELEMETRY:
                self.telemetry[node].append((now, json.loads(message.payload)["readings"]))
            elif parsed.kind == NodeTopic.STATUS:
                self.status[node] = message.payload.decode()

    def _frame(self, now: float, to: str | None, payload: bytes) -> None:
        if len(payload) < FRAME_HEADER_SIZE:
            return
        kind, index = payload[3], int.from_bytes(payload[4:8], "big")
        seen = FrameSeen(now, to, index if kind == 1 else self.table + index, len(payload))
        self.frames.append(seen)
        if self.on_frame is not None:
            self.on_frame(seen)

    def first(self, node: str, state: str, since: float) -> float | None:
        return next((t for t, p in self.progress[node] if t >= since and p["state"] == state), None)

    def frames_between(self, start: float, end: float) -> list[FrameSeen]:
        return [f for f in self.frames if start <= f.t <= end]

    @staticmethod
    def held(want: Want, units: int) -> int:
        return sum(bitmap_bits(want.have, units))


def new_client_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a live process (Linux /proc), None once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds of groups of processes over a stretch of time, sampled: a process first seen after the
    start counts from zero (a node's download mode is a new process); the last 50 ms of one that ends are lost."""

    def __init__(self, groups: dict[str, Callable[[], list[int | None]]]) -> None:
        self.groups = groups
        self.base: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self.started = time.monotonic()
        for pid, _, cpu in self._read():
            self.base[pid] = cpu

    def _read(self) -> list[tuple[int, str, float]]:
        out = []
        for group, pids in self.groups.items():
            for pid in pids():
                if pid is not None and (cpu := cpu_seconds(pid)) is not None:
                    out.append((pid, group, cpu))
        return out

    def sample(self) -> None:
        for pid, group, cpu in self._read():
            self.last[pid] = (group, cpu)

    def totals(self) -> dict[str, float]:
        self.sample()
        out = {group: 0.0 for group in self.groups}
        for pid, (group, cpu) in self.last.items():
            out[group] += cpu - self.base.get(pid, 0.0)
        out = {group: round(cpu, 2) for group, cpu in out.items()}
        out["wall_s"] = round(time.monotonic() - self.started, 2)
        return out

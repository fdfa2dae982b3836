"""A service as a child process (``python -m services.<name>``, telemetry unless told), and a QoS 1 load."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from nodefleet.contracts import Topics
from nodefleet.processes import stop_process
from nodefleet.wire import BrokerAddress, Client

ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """Runs the service alone from environment variables, as a container would; ready once it logs ``<name>_ready``."""

    def __init__(self, env: dict[str, str], *, name: str = "telemetry") -> None:
        self.name = name
        # No per-node limit unless a test sets one: its load generator sends hundreds a second per node.
        self.env = {**os.environ, "NODEFLEET_TELEMETRY_NODE_LIMIT": "0", **env, "NODEFLEET_LOG_FORMAT": "json",
                    "PYTHONPATH": str(ROOT)}
        self.log_path = Path(tempfile.mkdtemp(prefix=f"nodefleet-{name}-")) / "service.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"], env=self.env, cwd=ROOT,
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )

    def events(self) -> list[str]:
        lines = self.log_path.read_bytes()[self._log_offset:].decode(errors="replace").splitlines()
        found = []
        for line in lines:
            try:
                found.append(json.loads(line).get("event", ""))
            except json.JSONDecodeError:
                continue
        return found

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while f"{self.name}_ready" not in self.events():
            if self.process is None or self.process.poll() is not None:
                raise AssertionError(f"service exited: {self.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"service not ready in {timeout} s: {self.log_path.read_text()[-3000:]}")
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        """kill -9: no cleanup, no goodbye."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        stop_process(self.process)

    def rss_mb(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


class Load:
    """Publishes telemetry at QoS 1 and remembers which messages the broker acknowledged."""

    def __init__(self, broker_url: str, topics: Topics, *, nodes: int = 20, window: int = 200) -> None:
        self.address = BrokerAddress.parse(broker_url)
        self.topics = topics
        self.nodes = [f"node-{i}" for i in range(nodes)]
        self.window = window
        self.acked: set[tuple[str, int]] = set()
        self.sent = 0

    def body(self, seq: int) -> bytes:
        # One message in ten has no device time: the received-time dedup path is exercised too.
        ts = None if seq % 10 == 9 else time.time()
        return json.dumps({"v": 1, "seq": seq, "ts": ts, "readings": {"temperature": 21.5, "rssi": -60}}).encode()

    async def run(self, count: int, *, rate: float, start_seq: int = 0) -> None:
        """Publish ``count`` rounds (one message per node each) at about ``rate`` messages/s."""
        slots = asyncio.Semaphore(self.window)
        pending: set[asyncio.Task[None]] = set()
        async with Client(self.address, client_id=f"load-{uuid.uuid4().hex[:8]}", max_queued_outgoing=10_000) as mqtt:
            started = time.monotonic()
            sent_here = 0
            for seq in range(start_seq, start_seq + count):
                for node in self.nodes:
                    await slots.acquire()
                    task = asyncio.create_task(self._one(mqtt, node, seq, slots))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    self.sent += 1
                    sent_here += 1
                ahead = sent_here / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            await asyncio.gather(*pending)

    async def _one(self, mqtt: Client, node: str, seq: int, slots: asyncio.Semaphore) -> None:
        try:
            await mqtt.publish(self.topics.telemetry(node), self.body(seq), qos=1)
            self.acked.add((node, seq))
        finally:
            slots.release()

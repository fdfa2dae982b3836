"""A QoS 1 telemetry load that, like a node, reconnects to the next server and sends again what was not acknowledged."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from nodefleet.contracts import Topics
from nodefleet.errors import WireError
from nodefleet.wire import BrokerAddress, Client


class FailoverLoad:
    """Publishes ``rounds`` x ``nodes`` messages in chunks; a chunk that fails goes again on the next server."""

    def __init__(self, broker_urls: list[str], topics: Topics, *, nodes: int = 20, chunk: int = 200) -> None:
        self.addresses = [BrokerAddress.parse(url) for url in broker_urls]
        self.topics = topics
        self.nodes = [f"node-{i}" for i in range(nodes)]
        self.chunk = chunk
        self.acked: set[tuple[str, int]] = set()
        self.sent = 0
        self.reconnects = 0
        self.server = 0
        self._bodies: dict[tuple[str, int], bytes] = {}

    def body(self, node: str, seq: int) -> bytes:
        """The message's bytes, made once: a resend after a failover carries the same device time, as a node's does
        (a new time would make it a new reading, not a repeat)."""
        key = (node, seq)
        if key not in self._bodies:
            # One message in ten has no device time: the received-time dedup path is exercised too.
            ts = None if seq % 10 == 9 else time.time()
            self._bodies[key] = json.dumps({"v": 1, "seq": seq, "ts": ts,
                                            "readings": {"temperature": 21.5, "rssi": -60}}).encode()
        return self._bodies[key]

    async def run(self, rounds: int, *, rate: float, deadline: float = 60.0) -> None:
        todo = [(node, seq) for seq in range(rounds) for node in self.nodes]
        started = time.monotonic()
        while todo:
            if time.monotonic() - started > deadline:
                raise AssertionError(f"{len(todo)} messages still unacknowledged after {deadline:g} s")
            try:
                async with Client(self.addresses[self.server], client_id=f"load-{uuid.uuid4().hex[:8]}",
                                  max_inflight=self.chunk, max_queued_outgoing=10_000,
                                  pending_calls=10_000) as mqtt:
                    while todo:
                        chunk, rest = todo[:self.chunk], todo[self.chunk:]
                        async with asyncio.timeout(10):
                            await asyncio.gather(*(mqtt.publish(self.topics.telemetry(n), self.body(n, s), qos=1)
                                                   for n, s in chunk))
                        self.acked.update(chunk)
                        self.sent += len(chunk)
                        todo = rest
                        ahead = self.sent / rate - (time.monotonic() - started)
                        if ahead > 0:
                            await asyncio.sleep(ahead)
            except (WireError, TimeoutError):
                # What the broker acknowledged is in `acked`; the failed chunk is sent again (duplicates allowed).
                self.reconnects += 1
                self.server = (self.server + 1) % len(self.addresses)
                await asyncio.sleep(0.2)

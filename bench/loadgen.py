"""A lean QoS 1 load generator: pre-built PUBLISH packets on a raw socket, many in flight.

Each message is telemetry of one simulated node; ``ts`` is the moment the
packet is built (just before it is written), so the database's ``stored``
time minus ``ts`` is the publish-to-commit latency.  Runs in its own process
so it never competes with the measured subscriber for the same interpreter.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import asdict, dataclass

from nodefleet.contracts import Topics
from nodefleet.wire import packets


@dataclass
class LoadResult:
    sent: int
    acked: int
    seconds: float
    ended: float
    """Wall-clock time when the last PUBACK arrived."""

    @property
    def rate(self) -> float:
        return self.acked / self.seconds if self.seconds else 0.0


async def publish(
    host: str, port: int, *, topics: Topics, nodes: list[str], rounds: int, seq_base: int = 0,
    rate: float | None = None, window: int = 5000, chunk: int = 200,
) -> LoadResult:
    """Publish ``rounds`` messages per node (seq ``seq_base`` on); pace to ``rate`` msg/s if given."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(packets.connect(f"load-{uuid.uuid4().hex[:8]}", clean_session=True, keepalive=120))
    await writer.drain()
    connack = await reader.readexactly(4)
    if connack[3] != 0:
        raise RuntimeError(f"broker refused the load generator: {connack[3]}")
    total = rounds * len(nodes)
    topic_bytes = [topics.telemetry(n).encode() for n in nodes]
    acked = 0
    space = asyncio.Event()
    space.set()

    async def count_acks() -> None:
        nonlocal acked
        pending = b""
        while acked < total:
            data = await reader.read(65536)
            if not data:
                raise RuntimeError("broker closed the load generator's connection")
            pending += data
            whole = len(pending) // 4 * 4
            acked += whole // 4  # the broker sends us only PUBACKs (4 bytes each)
            pending = pending[whole:]
            space.set()

    acks = asyncio.create_task(count_acks())
    started = time.monotonic()
    sent = 0
    packet_id = 0
    while sent < total:
        if sent - acked >= window:
            space.clear()
            await space.wait()
            continue
        if rate is not None:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        n = min(chunk, total - sent, window - (sent - acked))
        now = time.time()
        out = []
        for i in range(sent, sent + n):
            node_index, rnd = i % len(nodes), i // len(nodes)
            packet_id = packet_id % 65535 + 1
            payload = json.dumps({"v": 1, "seq": seq_base + rnd, "ts": now, "readings": {"temperature": 21.5, "humidity": 48, "rssi": -61}})
            out.append(packets.publish(topic_bytes[node_index], payload.encode(), 1, packet_id))
        writer.write(b"".join(out))
        sent += n
        await writer.drain()
    await acks
    seconds = time.monotonic() - started
    writer.write(packets.DISCONNECT_PACKET)
    writer.close()
    return LoadResult(sent, acked, seconds, time.time())


def run_publisher(host: str, port: int, root: str, fleet: str, nodes: list[str], rounds: int, seq_base: int,
                  rate: float | None, start_at: float, results) -> None:
    """Entry point of one publisher process; waits for ``start_at`` so all start together."""
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    result = asyncio.run(publish(host, port, topics=Topics(root=root, fleet=fleet), nodes=nodes, rounds=rounds,
                                 seq_base=seq_base, rate=rate))
    results.put(asdict(result))

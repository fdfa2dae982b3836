"""A TCP proxy on loopback that adds a fixed one-way delay to each direction: a round trip without netem.

Each chunk read from one side is written to the other ``delay`` seconds after
it was read, so the link keeps its bandwidth and only gains latency (a chunk
does not wait for the one before it to be delivered, only for its own time).
Between the proxy's reads and writes at most ``buffer`` bytes wait per
direction; past that the proxy stops reading, so TCP back-pressure still
reaches the sender as it would on a slow link.

    async with DelayProxy(("127.0.0.1", broker_port), rtt=0.020) as proxy:
        ...  # clients connect to 127.0.0.1:proxy.port

As its own process (``bench.ota`` runs it so, off the benchmark's event loop):
``python -m bench.delay_proxy --upstream 127.0.0.1:1883 --rtt 0.02`` prints
its port on the first line, forwards until its stdin closes, SIGTERM or
``--max-seconds``, then prints its byte counts as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import threading
import time
from collections import deque

CHUNK = 65536


class _Direction:
    """One way of one connection: read, hold each chunk until its time, write."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, buffer: int) -> None:
        self.reader, self.writer, self.delay, self.buffer = reader, writer, delay, buffer
        self.held: deque[tuple[float, bytes]] = deque()
        self.held_bytes = 0
        self.arrived = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.closed = False
        self.bytes = 0

    async def pump_in(self) -> None:
        try:
            while chunk := await self.reader.read(CHUNK):
                self.held.append((time.monotonic() + self.delay, chunk))
                self.held_bytes += len(chunk)
                self.arrived.set()
                if self.held_bytes >= self.buffer:
                    self.room.clear()
                    await self.room.wait()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed = True
            self.arrived.set()

    async def pump_out(self) -> None:
        try:
            while True:
                if not self.held:
                    if self.closed:
                        break
                    self.arrived.clear()
                    await self.arrived.wait()
                    continue
                due, chunk = self.held[0]
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.held.popleft()
                self.held_bytes -= len(chunk)
                self.room.set()
                self.writer.write(chunk)
                self.bytes += len(chunk)
                await self.writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                self.writer.close()


class DelayProxy:
    """Listens on 127.0.0.1 (a free port, ``port``) and forwards to ``upstream`` with ``rtt / 2`` each way."""

    def __init__(self, upstream: tuple[str, int], *, rtt: float, buffer: int = 1 << 20) -> None:
        if upstream[0] not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the delay proxy only forwards to loopback")
        self.upstream = upstream
        self.delay = rtt / 2
        self.buffer = buffer
        self.port = 0
        self.connections = 0
        self.bytes_down = 0  # broker -> clients
        self.bytes_up = 0  # clients -> broker
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._server.wait_closed()

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                u_reader, u_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                c_writer.close()
                return
            self.connections += 1
            up = _Direction(c_reader, u_writer, self.delay, self.buffer)
            down = _Direction(u_reader, c_writer, self.delay, self.buffer)
            try:
                await asyncio.gather(up.pump_in(), up.pump_out(), down.pump_in(), down.pump_out())
            except asyncio.CancelledError:
                # The proxy is closing: end quietly (asyncio's stream callback logs a task ended by cancelling).
                for writer in (c_writer, u_writer):
                    writer.close()
            finally:
                self.bytes_down += down.bytes
                self.bytes_up += up.bytes
        finally:
            self._tasks.discard(task)


async def _serve(upstream: tuple[str, int], rtt: float, max_seconds: float) -> dict[str, int]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with DelayProxy(upstream, rtt=rtt) as proxy:
        print(proxy.port, flush=True)
        # The parent closing our stdin (or dying) ends the proxy too: it never outlives its benchmark.
        threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)), daemon=True).start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max_seconds)
    return {"connections": proxy.connections, "bytes_down": proxy.bytes_down, "bytes_up": proxy.bytes_up}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="HOST:PORT on loopback (the broker)")
    parser.add_argument("--rtt", type=float, default=0.020, help="round trip to add, seconds (default %(default)s)")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="stop by itself after this long")
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    counts = asyncio.run(_serve((host, int(port)), args.rtt, args.max_seconds))
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()

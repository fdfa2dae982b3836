"""A minimal HTTP client for the node's loopback web server (retries until it listens)."""

from __future__ import annotations

import asyncio
import json
from typing import Any


async def request(port: int, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                  headers: dict[str, str] | None = None, timeout: float = 15.0) -> tuple[int, Any]:
    if raw is None:
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        head = f"{method} {path} HTTP/1.0\r\nHost: node\r\nContent-Length: {len(data)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        raw = head.encode() + b"\r\n" + data
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
            break
        except (OSError, TimeoutError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)
    try:
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, content = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if b"application/json" in head:
        return status, json.loads(content)
    return status, content.decode()


async def poll(port: int, path: str, until, *, timeout: float = 20.0) -> Any:
    """GET ``path`` until ``until(answer)`` holds, riding over the node's restarts."""
    deadline = asyncio.get_running_loop().time() + timeout
    answer: Any = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            _, answer = await request(port, "GET", path, timeout=2)
            if until(answer):
                return answer
        except (OSError, TimeoutError, ValueError, IndexError):
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"GET {path} never satisfied the condition; last answer {answer!r}")

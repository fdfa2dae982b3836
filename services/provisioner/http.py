"""The small HTTP/1.1 edge a phone app needs: register a device, poll its status.

    POST /api/provision/register/       {home_id, device_name, chip_id?} -> 201 Registration
    GET  /api/provision/status/<id>     -> 200 ProvisioningStatus

JSON bodies (whatever Content-Type they declare), one request per connection,
bounded sizes and times; bad input gets a 4xx with ``{"error": "..."}``; a
wrong method on a known path is 405 with an ``Allow`` header. Registrations
are limited per client address (a token bucket, ``register_limit`` in
``register_window`` seconds): a flood gets 429 with ``Retry-After``, counted,
and one error event per address and window.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

from pydantic import ValidationError

from nodefleet.contracts.provisioning import (
    HTTP_REGISTER_PATH,
    HTTP_STATUS_PATH,
    RegisterRequest,
)
from nodefleet.errors import RequestError, StartupError
from nodefleet.fleet import ErrorReporter
from nodefleet.logging import get_logger
from nodefleet.ratelimit import RateLimits

from .credentials import CredentialError
from .registry import Registry
from .store import Conflict, NotFound, RegistryError

log = get_logger(__name__)

MAX_HEAD = 8 * 1024
MAX_BODY = 16 * 1024
READ_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
"""Connections served at once; more are answered 503 at once (a slow client cannot hold them all)."""
REGISTER = HTTP_REGISTER_PATH
STATUS = HTTP_STATUS_PATH
_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 409: "Conflict", 411: "Length Required", 413: "Payload Too Large",
            415: "Unsupported Media Type", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


class HttpEdgeError(StartupError):
    """The HTTP edge could not start."""


class HttpError(RequestError):
    """Answer the HTTP request with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, *, allow: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.allow = allow
        self.retry_after = retry_after


def _first_error(exc: ValidationError) -> str:
    problem = exc.errors()[0]
    where = ".".join(str(p) for p in problem["loc"])
    return f"{where}: {problem['msg']}" if where else problem["msg"]


class HttpEdge:
    def __init__(self, registry: Registry, errors: ErrorReporter, *, host: str, port: int,
                 register_limit: tuple[int, float] = (0, 60.0)) -> None:
        """``register_limit``: (registrations, window in seconds) per client address; 0 registrations: no limit."""
        self.registry = registry
        self.errors = errors
        self.host = host
        self.port = port
        self.limits = RateLimits(*register_limit) if register_limit[0] else None
        self.throttled = 0
        self._server: asyncio.Server | None = None
        self._open = 0

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._connection, self.host, self.port, limit=MAX_HEAD)
        except OSError as exc:
            raise HttpEdgeError(f"the provisioner's HTTP edge cannot listen on {self.host}:{self.port} ({exc.strerror}): "
                                f"choose another port with NODEFLEET_PROVISIONER_HTTP_PORT (`nodefleet up --http-port`; -1 "
                                f"turns it off)") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("http_edge_listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        allow = ""
        try:
            try:
                if self._open > MAX_CONNECTIONS:
                    raise HttpError(503, "too many requests at once; retry in a few seconds")
                async with asyncio.timeout(READ_TIMEOUT):
                    method, path, body = await self._read(reader)
                if method == "POST" and path in (REGISTER, REGISTER.rstrip("/")):
                    self._throttle(writer.get_extra_info("peername"))
                status, answer = await self._route(method, path, body)
            except HttpError as exc:
                status, answer = exc.status, {"error": str(exc)}
                allow = f"Allow: {exc.allow}\r\n" if exc.allow else ""
                if exc.retry_after is not None:
                    allow += f"Retry-After: {exc.retry_after}\r\n"
                if exc.status != 429:  # reported by _throttle under its own code
                    self.errors.report("http_bad_request", f"{exc.status}: {exc}")
            except TimeoutError:
                status, answer = 408, {"error": f"request not complete within {READ_TIMEOUT:g} s"}
                self.errors.report("http_bad_request", f"408: {answer['error']}")
            payload = json.dumps(answer).encode()
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
                f"{allow}Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload
            )
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._open -= 1
            writer.close()

    def _throttle(self, peer: Any) -> None:
        """Refuse a registration over the client address's limit (HttpError 429)."""
        if self.limits is None:
            return
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        now = time.monotonic()
        if self.limits.allow(address, now):
            return
        self.throttled += 1
        wait = max(1, math.ceil(1.0 / self.limits.rate))
        # Each one counted; the error events of a flood are bounded per window by the reporter, the log here.
        self.errors.report("registrations_throttled", f"{address} asked for more than {int(self.limits.capacity)} "
                           f"registrations in {self.limits.window:g} s: the excess got 429")
        if self.limits.first_in_window(address, now):
            log.warning("registrations_throttled", address=address, limit=int(self.limits.capacity),
                        window_s=self.limits.window)
        raise HttpError(429, f"too many registrations from {address}: at most {int(self.limits.capacity)} in "
                             f"{self.limits.window:g} s; retry in {wait} s", retry_after=wait)

    async def _read(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise HttpError(431, f"request head larger than {MAX_HEAD} bytes") from exc
        except asyncio.IncompleteReadError as exc:
            raise HttpError(400, "incomplete request head") from exc
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HttpError(400, "malformed request line; expected 'METHOD /path HTTP/1.1'")
        headers = {}
        for line in lines[1:]:
            if line:
                name, sep, value = line.partition(":")
                if not sep:
                    raise HttpError(400, f"malformed header line {line[:40]!r}")
                headers[name.strip().lower()] = value.strip()
        body = b""
        if parts[0] == "POST":
            if "transfer-encoding" in headers:
                raise HttpError(411, "send the body with a Content-Length, not chunked")
            declared = headers.get("content-length", "")
            if not declared.isascii() or not declared.isdigit():
                raise HttpError(411, "a POST needs a Content-Length header of decimal digits")
            # Digits only (int() takes "+1", " 1" and "1_0"); a length of thousands of digits is just too large.
            if len(declared.lstrip("0")) > len(str(MAX_BODY)) or int(declared) > MAX_BODY:
                raise HttpError(413, f"body larger than {MAX_BODY} bytes")
            length = int(declared)
            try:
                body = await reader.readexactly(length)
            except asyncio.IncompleteReadError as exc:
                raise HttpError(400, "body shorter than its Content-Length") from exc
            # The body is read as JSON whatever type it declares: `curl -d` says form-urlencoded.
        return parts[0], parts[1].split("?")[0], body

    async def _route(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        try:
            if path in (REGISTER, REGISTER.rstrip("/")):
                if method != "POST":
                    raise HttpError(405, f"use POST {REGISTER}", allow="POST")
                try:
                    data = json.loads(body)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise HttpError(400, f"body is not valid JSON: {exc}") from exc
                except RecursionError as exc:
                    raise HttpError(400, "body is not valid JSON: nested too deeply") from exc
                if not isinstance(data, dict):
                    raise HttpError(400, "body must be a JSON object {home_id, device_name, chip_id?}")
                registration = await self.registry.registrations.register(RegisterRequest.model_validate(data))
                return 201, registration.model_dump(mode="json")
            if path.startswith(STATUS):
                if method != "GET":
                    raise HttpError(405, f"use GET {STATUS}<provisioning_id>", allow="GET")
                provisioning_id = path[len(STATUS):].strip("/")
                if len(provisioning_id) != 32 or any(c not in "0123456789abcdef" for c in provisioning_id):
                    raise HttpError(400, "a provisioning id is 32 hex digits")
                return 200, (await self.registry.registrations.status(provisioning_id)).model_dump(mode="json")
            raise HttpError(404, f"no such path; use POST {REGISTER} or GET {STATUS}<provisioning_id>")
        except ValidationError as exc:
            raise HttpError(400, _first_error(exc)) from exc
        except NotFound as exc:
            raise HttpError(404, str(exc)) from exc
        except Conflict as exc:
            raise HttpError(409, str(exc)) from exc
        except RegistryError as exc:
            raise HttpError(400, str(exc)) from exc
        except CredentialError as exc:
            raise HttpError(503, f"{exc}; try again later") from exc
        except HttpError:
            raise
        except Exception as exc:
            log.exception("http_failed", path=path)
            raise HttpError(500, f"internal error: {exc}") from exc

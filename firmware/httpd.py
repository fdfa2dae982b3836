# A tiny HTTP/1.0 server: one request per connection, JSON or HTML answers, bodies up to 2 KB.
# Bounded for hostile clients: the head is read in small pieces up to MAX_HEAD within HEAD_S seconds, and at
# most MAX_OPEN connections are served at once (each costs about a kilobyte of the node's heap).
import asyncio
import json

MAX_BODY = 2048
MAX_HEAD = 2048
HEAD_S = 5
MAX_OPEN = 4
BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" \
       b"the node is serving other visitors: try again in a few seconds\n"
_REASON = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           413: "Payload Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error"}
_open = 0


def wrong_method(path, allowed):
    """The 405 answer for a known path asked with another method (the Allow header comes from "allow")."""
    allow = ", ".join(allowed)
    return 405, {"error": "use %s %s" % (" or ".join(allowed), path), "allow": allow}


def body_json(data):
    """The request body as a JSON object, or raise ValueError with what to send instead."""
    try:
        obj = json.loads(data)
    except ValueError:
        raise ValueError("body must be a JSON object")
    if not isinstance(obj, dict):
        raise ValueError("body must be a JSON object")
    return obj


async def _answer(w, status, content):
    if isinstance(content, str):
        ctype, body = "text/html; charset=utf-8", content.encode()
    else:
        ctype, body = "application/json", json.dumps(content).encode()
    extra = "WWW-Authenticate: Basic realm=\"node\"\r\n" if status == 401 else ""
    if status == 405 and isinstance(content, dict) and "allow" in content:
        extra = "Allow: %s\r\n" % content["allow"]
    head = "HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n" % (
        status, _REASON.get(status, ""), ctype, len(body), extra)
    w.write(head.encode())
    w.write(body)
    await w.drain()


async def _discard(r, n):
    # Read what the client sends so closing does not reset the connection before it sees the answer.
    while n > 0:
        chunk = await asyncio.wait_for(r.read(min(n, 512)), 5)
        if not chunk:
            break
        n -= len(chunk)


async def _head(r):
    # The request line and headers up to the blank line, and what came after it (the body's start). StreamReader's
    # readline would hold a line of any length: a 40 KB header line alone ran the heap out. None: over MAX_HEAD.
    buf = b""
    while True:
        end = buf.find(b"\n\r\n")
        n = 3
        if end < 0:
            end, n = buf.find(b"\n\n"), 2
        if end >= 0:
            return buf[:end + 1], buf[end + n:]
        if len(buf) > MAX_HEAD:
            return None, b""
        chunk = await r.read(256)
        if not chunk:
            return buf, b""
        buf += chunk


async def handle(r, w, route):
    """Answer one request on an accepted connection, then close it."""
    try:
        status, content = 400, {"error": "bad request line"}
        head, rest = await asyncio.wait_for(_head(r), HEAD_S)
        parts, length, auth = [], 0, None
        if head is None:
            status, content = 431, {"error": "request head over %d bytes" % MAX_HEAD}
        else:
            lines = head.split(b"\n")
            parts = lines[0].decode().split()
            for h in lines[1:]:
                k, _, v = h.decode().partition(":")
                k = k.strip().lower()
                if k == "content-length":
                    length = int(v)
                elif k == "authorization":
                    auth = v.strip()
        if len(parts) >= 2:
            if length > MAX_BODY or length < 0:
                status, content = 413, {"error": "body over %d bytes" % MAX_BODY}
                await _discard(r, min(length, 32768) - len(rest))
            else:
                data = rest[:length]
                if length > len(data):
                    data += await asyncio.wait_for(r.readexactly(length - len(data)), 5)
                try:
                    status, content = route(parts[0], parts[1].split("?")[0], data, auth)
                except Exception as exc:  # a handler bug answers 500, the server stays up
                    status, content = 500, {"error": "internal error: %r" % exc}
        await _answer(w, status, content)
    except Exception as exc:  # one bad client never stops the server
        try:
            await _answer(w, 400, {"error": "bad request: %r" % exc})
        except Exception:
            pass
    try:
        w.close()
        await w.wait_closed()
    except Exception:
        pass


async def refuse(w):
    """Over the connections allowed at once: a 503 written without reading the request, and the connection closed."""
    try:
        w.write(BUSY)
        await w.drain()
    except OSError:
        pass
    w.close()
    await w.wait_closed()


async def serve(addr, route):
    if addr is None:
        return None

    async def visit(r, w):
        global _open
        if _open >= MAX_OPEN:
            return await refuse(w)
        _open += 1
        try:
            await handle(r, w, route)
        finally:
            _open -= 1

    return await asyncio.start_server(visit, addr[0], addr[1])

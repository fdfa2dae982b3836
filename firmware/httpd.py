# A tiny HTTP/1.0 server: one request per connection, JSON or HTML answers, bodies up to 2 KB.
import asyncio
import json

MAX_BODY = 2048
_REASON = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           413: "Payload Too Large", 500: "Internal Server Error"}


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


async def handle(r, w, route):
    """Answer one request on an accepted connection, then close it."""
    try:
        status, content = 400, {"error": "bad request line"}
        parts = (await asyncio.wait_for(r.readline(), 5)).decode().split()
        length, auth = 0, None
        for _ in range(40):
            h = await asyncio.wait_for(r.readline(), 5)
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode().partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v)
            elif k == "authorization":
                auth = v.strip()
        if len(parts) >= 2:
            if length > MAX_BODY or length < 0:
                status, content = 413, {"error": "body over %d bytes" % MAX_BODY}
                await _discard(r, min(length, 32768))
            else:
                data = await asyncio.wait_for(r.readexactly(length), 5) if length else b""
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


async def serve(addr, route):
    if addr is None:
        return None
    return await asyncio.start_server(lambda r, w: handle(r, w, route), addr[0], addr[1])

# The local page's listener. Visits are rare, and the page with its HTTP server holds about 7 KB of heap: both are
# loaded for a visit and let go as soon as no visit is under way, so MQTT traffic (and an update) keeps that room
# the rest of the time (held for 30 s after a visit, they took the node's live peak from 85 to 94 KB of 110 KB).
import asyncio
import gc
import sys

import hal

MAX_VISITS = 2  # served at once (the portal, with no MQTT session to keep, allows httpd.MAX_OPEN): each costs 2 KB
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" \
        b"the node is short of memory or serving other visitors right now: try again in a minute\n"
_TRIAL = "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" \
         "{\"mode\": \"normal\", \"ota\": \"trial\", \"fw\": \"%s\", \"error\": \"the new firmware is on " \
         "trial: the page is back once it has confirmed itself, in a few seconds\"}"
_visiting = 0


def _unload():
    for name in ("web", "httpd"):
        sys.modules.pop(name, None)
    gc.collect()


async def serve(app):
    addr = hal.http_addr(False)
    if addr is None:
        return

    async def visit(r, w):
        global _visiting
        if _visiting >= MAX_VISITS:
            # A crowd (30 idle connections ran the heap out): refused at once, nothing read, nothing loaded.
            try:
                w.write(_BUSY)
                await w.drain()
            except OSError:
                pass
            w.close()
            await w.wait_closed()
            return
        _visiting += 1
        try:
            b = app.ota_boot
            if b is not None and b.state == "trial":
                # The new firmware's self-test is due: the page's 7 KB stay out of the heap it checks. A poller
                # (nodefleet ota upload, the page's script) is told to look again.
                try:
                    for _ in range(40):  # the request's head; a GET has no body
                        if (await asyncio.wait_for(r.readline(), 2)) in (b"\r\n", b"\n", b""):
                            break
                    w.write((_TRIAL % app.fw).encode())
                    await w.drain()
                except (OSError, asyncio.TimeoutError):
                    pass
                w.close()
                await w.wait_closed()
                return
            if "web" not in sys.modules:
                gc.collect()  # the modules load in large pieces: collect the garbage between them first
            import web

            await web.visit(app, r, w)
        except MemoryError as exc:
            # No room for the page now: this visit is told so, the node keeps running and logs why.
            app.errlog.add("page_no_memory", "local page not served: %r" % exc, "warning", app.ts())
            try:
                # Take in what the client sent, or closing resets the connection before it reads the answer.
                await asyncio.wait_for(r.read(2048), 1)
                w.write(_BUSY)
                await w.drain()
            except (OSError, asyncio.TimeoutError):
                pass
            w.close()
            await w.wait_closed()
        finally:
            _visiting -= 1
            if not _visiting:
                _unload()

    await asyncio.start_server(visit, addr[0], addr[1])

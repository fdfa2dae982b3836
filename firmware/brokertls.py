# MQTT over TLS to the broker: connections that check its certificate and name against the authority the node
# was provisioned with (CA_FILE, from POST /api/mqtt). Installed at boot (app.py) on a node that has one, in place of
# hal.open_connection, so a plain node's heap holds none of it: the normal mode has a few hundred bytes to spare
# under hostile HTTP clients (tests/reliability/test_node_http.py).
import asyncio
import gc
import ssl

import hal

CA_FILE = "ca.der"  # provision.py writes it
_ctx = None


def context(path=CA_FILE):
    # Made once and kept for every connect: it holds the parsed authority (about 3 KB in one piece), which a heap
    # cut up by traffic may no longer have; made again at each connect, a few refused connects in a row left no
    # room for it (MemoryError at every retry after a broker outage).
    global _ctx
    if _ctx is None:
        gc.collect()
        try:
            with open(path, "rb") as f:
                der = f.read()
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=der)
        except (OSError, ValueError) as exc:
            raise OSError("TLS: the broker's authority (%s) is unreadable (%s): provision the node again"
                          % (path, str(exc).strip() or type(exc).__name__))
        _ctx = ctx
    return _ctx


def install(path=CA_FILE):
    async def open_connection(host, port):
        if not hal.wifi_ok():
            raise OSError("wifi down")
        # The handshake runs at the first write (the CONNECT): a broker not trusted is mbedTLS's ValueError there.
        return await asyncio.open_connection(host, port, ssl=context(path))

    hal.open_connection = open_connection

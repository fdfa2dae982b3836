# Local web page in normal mode: the routes of the page (webpage.py) and of its JSON API.
import binascii
import gc
import sys

import httpd


def _authorized(app, auth):
    pw = app.cfg.get("web_password")
    if not pw:
        return True
    if not auth or not auth.startswith("Basic "):
        return False
    try:
        user_pw = binascii.a2b_base64(auth[6:]).decode()
    except (ValueError, UnicodeError):
        return False
    return user_pw.partition(":")[2] == pw


def _ota(app):
    # GET /api/ota in normal mode: the running firmware, an update's trial or result, the last LAN upload's failure.
    import store

    s = {"mode": "normal", "fw": app.fw, "ota": app.ota_boot.state if app.ota_boot is not None else None}
    last = store.load("ota_lan.json", None)
    if last:
        s.update(last)
    return s


# Known paths and their methods: another method is 405, an unknown path 404.
_ALLOWED = {"/": ("GET",), "/api/info": ("GET",), "/api/state": ("GET",), "/api/switch": ("POST",),
            "/api/stop": ("POST",), "/api/logic": ("POST",), "/api/restart": ("POST", "DELETE"),
            "/api/ota": ("GET", "POST")}


def _route(app, method, path, data, auth):
    if not _authorized(app, auth):
        return 401, {"error": "password required: log in with any user name and the node's web password"}
    allowed = _ALLOWED.get(path)
    if allowed is None:
        return 404, {"error": "use GET /, GET /api/state|info|ota, POST /api/switch|stop|logic|restart|ota, "
                              "DELETE /api/restart"}
    if method not in allowed:
        return httpd.wrong_method(path, allowed)
    if method == "GET" and path == "/":
        # The page's HTML (about 3 KB loaded) is there only while a page is made: the API, polled more often,
        # and the MQTT side keep that room.
        import webpage

        try:
            return 200, webpage.render(app, _ota(app))
        finally:
            sys.modules.pop("webpage", None)
    if method == "GET" and path == "/api/info":
        i = app.info()
        i["mode"] = "normal"
        i["heap_free"] = gc.mem_free()
        return 200, i
    if method == "GET" and path == "/api/state":
        s = app.node.payload()
        s["uptime"] = app.uptime()
        s["rules"] = app.node.rules
        s["errors"] = app.errlog.items[-5:]
        return 200, s
    if path == "/api/ota":
        if method == "GET":
            return 200, _ota(app)
        if app.ota_boot is not None and app.ota_boot.state == "trial":
            return 409, {"error": "the new firmware is on trial: upload again once GET /api/ota says updated"}
        import store

        # Into the download mode (otamode.py, otalan.py) by a restart, as an MQTT offer does: the upload's
        # checks, flash writes and install need the heap the OTA modules get only there.
        store.remove("ota_lan.json")
        store.save("ota_offer.json", {"offer": {"lan": True}})
        app.errlog.add("ota_lan", "LAN upload asked for: restarting into the download mode", "info", app.ts())
        app.restart_soon(True)
        return 202, {"ok": True, "next": "download mode: poll GET /api/ota until mode is download, then POST the "
                     "upload file (.nfu) to /api/ota"}
    if method == "DELETE" and path == "/api/restart":
        import store

        store.remove("wifi.json")
        # Said before leaving, so the backend stops counting the node as provisioned (restart_soon lets it go out);
        # the boot count lets a late copy (sent after the next provisioning) be told from a fresh one.
        app.errlog.add("unprovisioned", "unprovisioned at boot %d: WiFi settings wiped by DELETE /api/restart, "
                       "restarting into provisioning mode" % app.boot_count, "info", app.ts())
        app.restart_soon()
        return 200, {"ok": True, "next": "provisioning mode"}
    import commands

    try:
        httpd.body_json(data or b"{}")
    except ValueError as exc:
        return 400, {"error": str(exc)}
    cid, err = commands.handle(app, path[5:], data or b"{}")
    if err:
        app.bad_input += 1
        return 400, {"error": err}
    return 200, app.node.payload()


async def visit(app, r, w):
    """One request to the local page or its API on an accepted connection."""
    await httpd.handle(r, w, lambda m, p, d, a: _route(app, m, p, d, a))

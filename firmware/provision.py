# Provisioning mode: an access point with an HTTP API to store WiFi and MQTT settings.
import asyncio
import gc

import hal
import httpd
import led
import store

CA_FILE = "ca.der"  # the broker's certificate authority (DER): MQTT over TLS (brokertls.py reads it)

_PAGE = """<!doctype html><meta name=viewport content="width=device-width"><title>nodefleet setup</title>
<h1>nodefleet node %s</h1><p>%s</p>
<form id=w><h2>WiFi</h2><input name=ssid placeholder=SSID> <input name=password type=password placeholder=password></form>
<form id=m><h2>MQTT</h2><input name=broker placeholder=broker> <input name=port value=1883>
<input name=topic_prefix placeholder="home/node"> <input name=node_name placeholder=node>
<input name=username placeholder=user> <input name=password type=password placeholder=password></form>
<p><button onclick=save()>Save and restart</button></p>
<script>
function obj(f){var o={};new FormData(f).forEach((v,k)=>{if(v)o[k]=k=='port'?+v:v});return o}
async function save(){for(const[p,f]of[['wifi',w],['mqtt',m]]){const r=await fetch('/api/'+p,{method:'POST',body:JSON.stringify(obj(f))});
if(!r.ok){alert((await r.json()).error);return}}await fetch('/api/restart',{method:'POST'});alert('restarting')}
</script>"""


def _text(obj, key, lo, hi, required=True):
    v = obj.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not lo <= len(v) <= hi:
        raise ValueError("%s must be text of %d-%d characters" % (key, lo, hi))
    return v


def _ip(obj, key):
    v = obj.get(key)
    if v is None:
        return None
    parts = v.split(".") if isinstance(v, str) else []
    if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 for p in parts):
        raise ValueError("%s must be an IPv4 address such as 192.168.1.50" % key)
    return v


def check_wifi(b):
    w = {"ssid": _text(b, "ssid", 1, 32), "password": _text(b, "password", 0, 64, False) or ""}
    dhcp = b.get("dhcp", True)
    if not isinstance(dhcp, bool):
        raise ValueError("dhcp must be true or false")
    if not dhcp:
        w["ip"] = _ip(b, "ip")
        w["gateway"] = _ip(b, "gateway")
        if not w["ip"] or not w["gateway"]:
            raise ValueError("a static address needs ip and gateway (or dhcp: true)")
    return w


def check_mqtt(b):
    m = {"broker": _text(b, "broker", 1, 64), "topic_prefix": _text(b, "topic_prefix", 1, 128),
         "node_name": _text(b, "node_name", 1, 63)}
    port = b.get("port", 1883)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError("port must be 1-65535")
    m["port"] = port
    if "+" in m["topic_prefix"] or "#" in m["topic_prefix"]:
        raise ValueError("topic_prefix must not contain + or #")
    for k in ("username", "password", "ota_key"):
        v = _text(b, k, 1, 64, False)
        if v:
            m[k] = v
    ca = _text(b, "ca", 16, 1400, False)  # the broker's authority, base64 DER: TLS to the broker
    der = None
    if ca:
        import binascii

        try:
            der = binascii.a2b_base64(ca)
        except ValueError:
            raise ValueError("ca must be the broker's certificate authority as base64 DER")
        if der[0] != 0x30:
            raise ValueError("ca must be the broker's certificate authority as base64 DER (not PEM)")
        m["tls"] = True
    return m, der


def save_mqtt(b):
    m, der = check_mqtt(b)
    if der is None:
        store.remove(CA_FILE)
    else:
        with open(CA_FILE + ".tmp", "wb") as f:
            f.write(der)
        store.replace(CA_FILE + ".tmp", CA_FILE)
    store.save("mqtt.json", m)


# Known paths and their methods: another method is 405, an unknown path 404.
_ALLOWED = {"/": ("GET",), "/api/info": ("GET",), "/api/wifi": ("POST",), "/api/mqtt": ("POST",),
            "/api/restart": ("POST", "DELETE")}


class Portal:
    def __init__(self, fw, caps):
        self.fw = fw
        self.caps = caps
        self.error = (store.load("prov_err.json", None) or {}).get("error")
        self.touched = False

    def info(self):
        return {"chip_id": hal.chip_id(), "fw": self.fw, "caps": self.caps, "mac": hal.mac(),
                "heap_free": gc.mem_free(), "error": self.error, "mode": "provisioning",
                "wifi_stored": store.load("wifi.json") is not None, "mqtt_stored": store.load("mqtt.json") is not None}

    def route(self, method, path, data, auth):
        if method != "GET":
            self.touched = True
        allowed = _ALLOWED.get(path)
        if allowed is None:
            return 404, {"error": "use GET /api/info, POST /api/wifi, POST /api/mqtt, POST or DELETE /api/restart"}
        if method not in allowed:
            return httpd.wrong_method(path, allowed)
        if method == "GET" and path == "/":
            return 200, _PAGE % (hal.chip_id(), self.error or "Enter the WiFi and MQTT settings.")
        if method == "GET" and path == "/api/info":
            return 200, self.info()
        if path == "/api/restart" and method in ("POST", "DELETE"):
            if method == "DELETE":
                store.remove("wifi.json")
            asyncio.create_task(_restart())
            return 200, {"ok": True}
        if method == "POST" and path in ("/api/wifi", "/api/mqtt"):
            try:
                body = httpd.body_json(data)
                if path == "/api/wifi":
                    store.save("wifi.json", check_wifi(body))
                else:
                    save_mqtt(body)
            except ValueError as exc:
                return 400, {"error": str(exc)}
            return 200, {"ok": True}
        return 500, {"error": "no handler for %s %s" % (method, path)}


async def _restart():
    await asyncio.sleep_ms(300)
    hal.restart()


async def run(fw, caps):
    portal = Portal(fw, caps)
    hal.ap(True, "nodefleet-" + hal.chip_id()[-4:])
    asyncio.create_task(led.run(lambda: "provisioning"))
    await httpd.serve(hal.http_addr(True), portal.route)
    # Sent here because stored WiFi failed (a router down at boot, say): try it again now and then,
    # unless someone is using the portal.
    retry = portal.error is not None and store.load("wifi.json") is not None and store.load("mqtt.json") is not None
    waited = 0
    while True:
        await asyncio.sleep(1)
        waited = 0 if portal.touched else waited + 1
        portal.touched = False
        if retry and waited >= hal.PROV_RETRY_S:
            hal.restart()

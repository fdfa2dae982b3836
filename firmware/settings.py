# Device config (retained config topic) checks and defaults; firmware-local settings of mqtt.json.
DEFAULT = {"v": 1, "version": 1, "telemetry_period": 60, "power_on": "off", "tz": [], "ap_after": 300}


POWER_ON = ("off", "last", "schedule")
# The Config contract's fields (nodefleet/contracts/payloads.py): anything else is refused, not stored.
FIELDS = ("v", "version", "pins", "telemetry_period", "power_on", "tz", "tz_name", "web_password", "ap_after", "sleep")


def _int_in(x, lo, hi):
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi


def check_config(c):
    if not isinstance(c, dict) or c.get("v") != 1:
        return "config must be an object with v=1"
    if not _int_in(c.get("version"), 1, 2 ** 31 - 1):
        return "config version must be an integer 1-2147483647"
    for k in c:
        if k not in FIELDS:
            return "unknown config field %s: the fields are %s" % (k, ", ".join(FIELDS))
    if not _int_in(c.get("telemetry_period", 60), 1, 86400):
        return "telemetry_period must be 1-86400 seconds"
    if c.get("power_on", "off") not in POWER_ON:
        return "power_on must be off, last or schedule"
    if not _int_in(c.get("ap_after", 300), 0, 86400):
        return "ap_after must be 0-86400 seconds"
    tz = c.get("tz", [])
    if not isinstance(tz, list) or len(tz) > 64:
        return "tz must be a list of at most 64 offsets"
    for o in tz:
        if not isinstance(o, dict) or not isinstance(o.get("from"), (int, float)) or not _int_in(o.get("offset"), -50400, 50400):
            return "each tz entry needs from (epoch) and offset (seconds, within 14 h)"
    pins = c.get("pins", {})
    if not isinstance(pins, dict):
        return "pins must be an object"
    outs = pins.get("outputs", {})
    if not isinstance(outs, dict):
        return "pins.outputs must be an object"
    for k in ("relay", "led"):
        p = outs.get(k)
        # ESP32: GPIO 6-11 drive the flash chip, 34-39 are input-only.
        if p is not None and (not _int_in(p, 0, 39) or 6 <= p <= 11 or p >= 34):
            return "pins.outputs.%s=%s cannot drive an output on the ESP32: use 0-5, 12-33" % (k, p)
    if c.get("sleep") is not None:
        import sleep  # only a config with a sleep window loads its check

        err = sleep.check_window(c["sleep"])
        if err:
            return err
    pw = c.get("web_password")
    if pw is not None and not isinstance(pw, str):
        return "web_password must be text"
    return None


def merged(c):
    out = dict(DEFAULT)
    out.update(c or {})
    return out

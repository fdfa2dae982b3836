# Device config (retained config topic) checks and defaults; firmware-local settings of mqtt.json.
DEFAULT = {"v": 1, "version": 1, "telemetry_period": 60, "power_on": "off", "tz": [], "ap_after": 300}


def check_config(c):
    """Why config ``c`` cannot be used, or None."""
    import sys

    import cfgcheck

    try:
        return cfgcheck.check(c)
    finally:
        # A config comes once per connect: its checks need not take heap the rest of the time.
        sys.modules.pop("cfgcheck", None)


def merged(c):
    out = dict(DEFAULT)
    out.update(c or {})
    return out

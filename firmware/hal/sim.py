# Simulated board for the MicroPython unix port; tests drive it through hal.simctl (which also starts it).
import asyncio
import os
import random
import sys
import time

_env = os.getenv
_pins = {}
relay_on = 0
led_level = 0
led_pattern = ""
button_held = _env("NF_BUTTON") == "1"
wifi_in_range = _env("NF_WIFI", "1") == "1"
wifi_joined = False
ap_on = False
# NF_CLOCK: where the board's clock starts (epoch s), e.g. 946684800 for an ESP32's unset RTC; else this machine's.
_clock_offset = int(_env("NF_CLOCK") or time.time()) - time.time()
_ntp = _env("NF_NTP", "1") == "1"
_rtc_set = _ntp
_ssid = _env("NF_SSID") or "simnet"
_password = _env("NF_PASS") or "simpass"
PLATFORM = "sim"
PROV_RETRY_S = int(_env("NF_PROV_RETRY") or 600)


def init(pins):
    _pins.update(pins or {})


def relay(on):
    global relay_on
    relay_on = 1 if on else 0


def led(level, pattern):
    global led_level, led_pattern
    led_level = level
    led_pattern = pattern


def button():
    return button_held


def chip_id():
    return _env("NF_CHIP_ID") or "5eed0000beef"


def mac():
    c = chip_id()[-12:]
    return ":".join(c[i:i + 2] for i in range(0, len(c) - 1, 2))


def reset_cause():
    return _env("NF_RESET") or "power_on"


def restart():
    # The launcher starts the process again when it exits with 75.
    sys.exit(75)


def feed():
    pass


def sensors():
    return {"temperature": 20 + random.getrandbits(4) / 10, "humidity": 45 + random.getrandbits(3)}


async def wifi_connect(ssid, password, ip=None, gateway=None):
    global wifi_joined
    await asyncio.sleep_ms(20)
    if not wifi_in_range:
        return "no network in range"
    if ssid != _ssid:
        return "network %s not found" % ssid
    if password != _password:
        return "wrong password for %s" % ssid
    wifi_joined = True
    return None


def wifi_ok():
    return wifi_in_range and wifi_joined


def set_wifi(up):
    global wifi_in_range, wifi_joined
    wifi_in_range = up
    if not up:
        wifi_joined = False


def rssi():
    return -55 if wifi_ok() else None


def ip():
    return "127.0.0.1" if wifi_ok() else None


def ap(on, essid=None):
    global ap_on
    ap_on = bool(on)


def time_s():
    return time.time() + _clock_offset


def rtc_valid():
    return _rtc_set


def set_time(ts):
    global _clock_offset, _rtc_set
    _clock_offset = int(ts) - time.time()
    _rtc_set = True


async def ntp():
    # NF_NTP=0: no NTP server answers. One that does agrees with the simulated clock (its offset stays).
    global _rtc_set
    if _ntp:
        _rtc_set = True
    return _ntp


def http_addr(provisioning):
    port = _env("NF_HTTP_PORT")
    return ("127.0.0.1", int(port)) if port else None


async def open_connection(host, port):
    if not wifi_ok():
        raise OSError("wifi down")
    return await asyncio.open_connection(host, port)


def mark_healthy():
    pass


def start():
    if reset_cause() == "deepsleep":
        from hal import simsleep

        simsleep.woke()
    # The control channel for the tests (NF_CTL_PORT): without it, its module is never loaded.
    if _env("NF_CTL_PORT"):
        from hal import simctl

        simctl.start()

# ESP32 board: pins, WiFi station and access point, RTC, NTP, watchdog, DHT.
import asyncio
import time

import dht
import esp32
import machine
import network
import ntptime
import ubinascii

PLATFORM = "esp32"
# Provisioning mode entered because the stored WiFi failed retries it after this long untouched.
PROV_RETRY_S = 600
# Seconds between 1970 and this port's epoch (2000 on older firmware).
_EPOCH = 946684800 if time.gmtime(0)[0] == 2000 else 0
_relay = None
_relay_low = False
_led = None
_button = None
_dht = None
_wdt = None
_sta = network.WLAN(network.STA_IF)
_ap = network.WLAN(network.AP_IF)
_CAUSES = {
    machine.PWRON_RESET: "power_on",
    machine.HARD_RESET: "hard",
    machine.WDT_RESET: "watchdog",
    machine.DEEPSLEEP_RESET: "deepsleep",
    machine.SOFT_RESET: "soft",
}


def init(pins):
    global _relay, _relay_low, _led, _button, _dht
    out = pins.get("outputs", {})
    inp = pins.get("inputs", {})
    _relay_low = bool(out.get("relay_active_low"))
    # hold=False: a deep sleep held the pin off (deepsleep below); the node drives it again.
    _relay = machine.Pin(out.get("relay", 26), machine.Pin.OUT, value=1 if _relay_low else 0, hold=False)
    led_pin = out.get("led", 2)
    _led = machine.Pin(led_pin, machine.Pin.OUT) if led_pin is not None else None
    btn = inp.get("button", 22)
    _button = machine.Pin(btn, machine.Pin.IN, machine.Pin.PULL_UP) if btn is not None else None
    pin = inp.get("dht")
    if pin is not None:
        kind = dht.DHT22 if inp.get("dht_type") == "dht22" else dht.DHT11
        _dht = kind(machine.Pin(pin))


def relay(on):
    if _relay is not None:
        _relay.value((not on) if _relay_low else bool(on))


def led(level, pattern):
    if _led is not None:
        _led.value(level)


def button():
    # Held = pulled to ground.
    return _button is not None and _button.value() == 0


def chip_id():
    return ubinascii.hexlify(machine.unique_id()).decode()


def mac():
    return ubinascii.hexlify(_sta.config("mac"), ":").decode()


def reset_cause():
    return _CAUSES.get(machine.reset_cause(), "unknown")


def restart():
    machine.reset()


def feed():
    if _wdt is not None:
        _wdt.feed()


def sensors():
    if _dht is None:
        return {}
    try:
        _dht.measure()
        return {"temperature": _dht.temperature(), "humidity": _dht.humidity()}
    except OSError:
        return {"temperature": None, "humidity": None}


async def wifi_connect(ssid, password, ip=None, gateway=None):
    try:
        _sta.active(True)
        _sta.disconnect()
        if ip:
            _sta.ifconfig((ip, "255.255.255.0", gateway or ip, gateway or "8.8.8.8"))
        _sta.connect(ssid, password)
    except OSError as exc:
        return "wifi error %r" % exc
    for _ in range(100):
        status = _sta.status()
        if _sta.isconnected():
            return None
        if status == network.STAT_WRONG_PASSWORD:
            return "wrong password for %s" % ssid
        if status == network.STAT_NO_AP_FOUND:
            return "network %s not found" % ssid
        await asyncio.sleep_ms(150)
    _sta.disconnect()
    return "could not join %s within 15 s" % ssid


def wifi_ok():
    return _sta.isconnected()


def rssi():
    try:
        return _sta.status("rssi") if _sta.isconnected() else None
    except OSError:
        return None


def ip():
    return _sta.ifconfig()[0] if _sta.isconnected() else None


def ap(on, essid=None):
    if on:
        _ap.active(True)
        _ap.config(essid=essid or "nodefleet-" + chip_id()[-4:], authmode=network.AUTH_OPEN)
    else:
        _ap.active(False)


def time_s():
    return time.time() + _EPOCH


def rtc_valid():
    return time_s() > 1700000000


def set_time(ts):
    t = time.gmtime(int(ts) - _EPOCH)
    machine.RTC().datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0))


async def ntp():
    try:
        ntptime.settime()
        return True
    except (OSError, OverflowError):
        return False


def http_addr(provisioning):
    return ("0.0.0.0", 80)


async def open_connection(host, port):
    return await asyncio.open_connection(host, port)


def start():
    global _wdt
    _wdt = machine.WDT(timeout=30000)


def mark_healthy():
    # Once online and healthy, keep this image (cancels an OTA rollback).
    try:
        esp32.Partition.mark_app_valid_cancel_rollback()
    except (AttributeError, OSError):
        pass

# What normal mode and the download mode (otamode.py) share: the switch and its commands, the MQTT link,
# state, acks, the error log's topic, WiFi, NodeLogic ticks, the button, the LED and telemetry.
import asyncio
import json
import random
import sys
import time

import clock
import hal
import heap
import store
from counter import Counter
from link import Link

CMD_MAX = 512  # a command is a few hundred bytes at most: a larger one is dropped unparsed
NTP_EVERY_MS = 6 * 3600 * 1000
HOLD_MS = 5000
CAPS = ["switch", "temperature", "humidity", "schedule"]
KEEP = "keep.json"  # written before a restart between modes: the next boot restores relay, rule and its end


class Core:
    SLEEPS = False  # set/sleep is normal mode's (sleep.py); the download modes do not sleep

    def __init__(self, subs, max_in, *, fw, boot_count, cause, errlog, cfg, wifi, mq, power_on=None):
        # subs: [(filter, qos), ...], fixed for the mode's life.
        self.fw = fw
        self.boot_count = boot_count
        self.cause = cause
        self.errlog = errlog
        self.cfg = cfg
        self.cfg_raw = store.load("config.json", None)
        self.wifi = wifi
        self.mq = mq
        self.prefix = mq["topic_prefix"]
        self._topics = {}
        self.started = time.ticks_ms()
        self.bad_input = 0
        self.ap_open = False
        self.wifi_seen = False
        self.connect_failed = False
        self.sensors = True
        stored = store.load("schedule.json", None)
        self.schedule = stored or {"v": 1, "version": 1, "rules": []}
        self.schedule_version = stored.get("version") if stored else None  # applied from the retained topic
        self.telemetry_seq = Counter("telemetry")
        clock.set_tz(cfg.get("tz", []))
        if store.load(KEEP, None) is not None:
            store.remove(KEEP)
            power_on = "last"
        import node

        self.node = node.Node(power_on or cfg.get("power_on", "off"), self.publish_state)
        self.node.rules = self.schedule.get("rules", [])
        self.node.state_seq = self.node.seq.next()
        self.refused_logged = False
        self.sleep_until = None  # set on the last state before a planned sleep (sleep.py)
        errlog.publish = self.publish_log
        self.link = Link(
            host=mq["broker"], port=mq.get("port", 1883), client_id=mq.get("node_name") or hal.chip_id(),
            user=mq.get("username"), password=mq.get("password"), keepalive=mq.get("keepalive", 30), subs=subs,
            will=(self.prefix + "/status", b"offline", True, 1), on_msg=self.on_msg, on_up=self.on_up,
            on_down=self.on_down, on_refused=self.on_refused, max_in=max_in, max_backoff=mq.get("max_backoff", 30),
            max_queue=mq.get("max_queue", 24), max_queue_bytes=mq.get("max_queue_bytes", 1536))

    # -- publishing --------------------------------------------------------
    def topic(self, kind):
        # One string per kind for the node's life, not one per message waiting in the queue.
        t = self._topics.get(kind)
        if t is None:
            t = self._topics[kind] = self.prefix + "/" + kind
        return t

    def send(self, kind, obj, retain=False, qos=0, key=None, on_acked=None):
        self.link.publish(self.topic(kind), json.dumps(obj).encode(), retain, qos, key, on_acked)

    def publish_state(self):
        p = self.node.payload()
        v = (self.cfg_raw or {}).get("version")
        if v:
            p["config"] = v  # the config version in force, for the provisioner and openHAB
        p["schedule"] = self.schedule_version  # the schedule in force (null: none), confirmed like config
        if self.sleep_until:
            p["sleep_until"] = self.sleep_until
        self.send("state", p, True, 1, "state")

    def publish_log(self, *_):
        # The ring on flash is the log's queue: one entry in flight, the next once the broker has it.
        # So an entry is never queued twice (after an outage) and a burst of entries costs no heap.
        if self.link.pending("log"):
            return
        nxt = self.errlog.first_unsent()
        if nxt is not None:
            seq = nxt[0]
            self.link.publish(self.topic("log"), nxt[1], False, 1, "log", lambda: self._log_sent(seq))

    def _log_sent(self, seq):
        self.errlog.mark_sent(seq)
        self.publish_log()

    def ack(self, cid, status, err):
        a = {"v": 1, "id": cid, "status": status}
        if err:
            a["error"] = err
        else:
            a["state_seq"] = self.node.state_seq
        self.send("ack", a, False, 1)

    def uptime(self):
        return time.ticks_diff(time.ticks_ms(), self.started) // 1000

    def info(self):
        i = {"v": 1, "chip_id": hal.chip_id(), "fw": self.fw, "caps": CAPS, "boot_reason": self.cause,
             "boot_count": self.boot_count, "mac": hal.mac()}
        if hal.ip():
            i["ip"] = hal.ip()
        i["clock"] = clock.source()
        return i

    # -- link events -------------------------------------------------------
    def on_up(self):
        self.link.publish(self.topic("status"), b"online", True, 1, "status")
        self.send("info", self.info(), True, 1, "info")
        self.publish_state()
        self.publish_log()
        hal.mark_healthy()

    def on_down(self, reason, was_up):
        # One entry per outage: a session that ended, or the first failed connect since the last session.
        if not reason or not hal.wifi_ok():
            return
        if was_up:
            self.errlog.add("mqtt_lost", "broker connection lost: " + reason, "warning", self.ts())
            self.connect_failed = False
        elif not self.connect_failed:
            self.connect_failed = True
            self.errlog.add("mqtt_connect", "cannot reach the broker: " + reason, "warning", self.ts())

    def on_refused(self, filters):
        if not self.refused_logged:
            self.refused_logged = True
            self.errlog.add("subscribe_refused", "the broker refused " + ", ".join(filters) +
                            ": grant the node read access to them", "warning", self.ts())

    def ts(self):
        return clock.now() if clock.valid() else None

    def bad(self, code, msg):
        self.bad_input += 1
        self.errlog.add(code, msg, "warning", self.ts())

    def on_msg(self, topic, payload, size, retained):
        try:
            frame = self.dispatch(topic.decode(), payload, size, retained)
        except Exception as exc:  # a handler bug must not end the session
            frame = False
            if not isinstance(exc, MemoryError):  # no room to parse it (a large payload): no bug to trace
                sys.print_exception(exc)  # the console (a serial port, the simulator's log) gets the traceback
            self.bad("handler_error", repr(exc))
        if size >= 256 and not frame:
            heap.sample()  # what a large message left behind goes now, before it fragments the heap

    def json_of(self, kind, payload):
        if not payload:
            return None  # a retained message was cleared
        try:
            v = json.loads(payload)
        except (ValueError, UnicodeError):
            self.bad("bad_" + kind, kind + " is not valid JSON: keep the previous one")
            return None
        if v is None:
            self.bad("bad_" + kind, kind + " is JSON null: keep the previous one (clear it with an empty message)")
        return v

    def offer_of(self, payload):
        # An OTA offer as far as the modes look at it without the OTA modules, or None.
        o = self.json_of("offer", payload)
        if o is not None and (not isinstance(o, dict) or not isinstance(o.get("release"), str) or
                              "sha256" not in o or "tag" not in o):
            self.bad("bad_offer", "ota/offer is not an offer: ignored")
            return None
        return o

    def too_large(self, kind, payload, size, limit):
        if payload is None or size > limit:
            self.bad("payload_too_large", "%s payload of %d bytes is over the %d-byte limit: dropped" % (kind, size, limit))
            return True
        return False

    def command(self, kind, payload, size, retained):
        if self.too_large(kind, payload, size, CMD_MAX):
            return
        if retained:
            # A retained command would replay at every connect and switch the relay at boot.
            if payload:
                self.bad("retained_command", "%s is retained: ignored; clear it with an empty retained message" % kind)
            return
        # Loaded for the moment a command acts, then let go: 5.7 KB of heap the rest of the time, in every mode
        # (the trial boot and the LAN upload need it); a command is rare, its load a millisecond here.
        import commands

        cid, status, err = commands.run(self, kind[4:], payload, self.link.replaying)
        del commands
        sys.modules.pop("commands", None)
        if status == "error":
            self.bad_input += 1
        if cid is not None:
            self.ack(cid, status, err)
        elif status == "expired":
            self.errlog.add("command_expired", "%s: %s" % (kind, err), "warning", self.ts())
        elif err:
            self.errlog.add("bad_command", "%s: %s" % (kind, err), "warning", self.ts())

    def restart_soon(self, keep=False):
        asyncio.create_task(self._restart(keep))

    async def _restart(self, keep=False):
        # Let acks and state go out first. keep: into the other mode, the relay as it is (KEEP).
        for _ in range(100):
            if not self.link.queue and not self.link.inflight:
                break
            await asyncio.sleep_ms(10)
        await asyncio.sleep_ms(100)
        if keep:
            store.save(KEEP, 1)
        hal.restart()

    def led_pattern(self):
        if self.node.stopped:
            return "error"  # failsafe engaged: someone has to resume it
        if not hal.wifi_ok():
            return "ap" if self.ap_open else "no_wifi"
        if not self.link.up:
            return "no_broker"
        return "ok" if clock.valid() else "no_time"

    # -- tasks -------------------------------------------------------------
    async def wifi_loop(self):
        w = self.wifi
        failures = 0
        backoff = 1
        down_since = time.ticks_ms()
        synced = time.ticks_ms()
        while True:
            if hal.wifi_ok():
                if self.ap_open:
                    hal.ap(False)
                    self.ap_open = False
                down_since = None
                backoff = 1
                if time.ticks_diff(time.ticks_ms(), synced) > NTP_EVERY_MS:
                    # The RTC drifts: NTP again now and then (the first sync happens on joining).
                    synced = time.ticks_ms()
                    if await hal.ntp():
                        clock.got_ntp()
                await asyncio.sleep_ms(300)
                continue
            if down_since is None:
                down_since = time.ticks_ms()
            err = await hal.wifi_connect(w["ssid"], w.get("password", ""), w.get("ip"), w.get("gateway"))
            if err is None:
                if not self.wifi_seen:
                    store.remove("prov_err.json")
                self.wifi_seen = True
                if clock.source() != "ntp" and await hal.ntp():
                    clock.got_ntp()
                    self.node.changed()  # the info says "ntp" at the next connect (WiFi came first)
                continue
            failures += 1
            if not self.wifi_seen and failures >= 3:
                # Stored credentials never worked: back to provisioning, keeping them and saying why.
                store.save("prov_err.json", {"error": "wifi: " + err, "enter": True})
                hal.restart()
            if not self.ap_open and time.ticks_diff(time.ticks_ms(), down_since) >= self.cfg["ap_after"] * 1000:
                hal.ap(True, "nodefleet-" + hal.chip_id()[-4:])
                self.ap_open = True
            await asyncio.sleep_ms(int(backoff * 1000 * (0.5 + random.getrandbits(8) / 256)))
            backoff = min(backoff * 2, self.mq.get("max_backoff", 30))

    async def logic_loop(self):
        valid = clock.valid()
        while True:
            hal.feed()  # the ESP32 watchdog: a stalled loop resets the chip (the download mode has no LED task)
            self.node.tick()
            if clock.valid() != valid:
                valid = clock.valid()
                self.node.changed()
            await asyncio.sleep_ms(250)

    async def button_loop(self):
        # A press toggles the relay by hand; held for HOLD_MS it restarts into provisioning mode.
        held_since = None
        while True:
            await asyncio.sleep_ms(50)
            if hal.button():
                if held_since is None:
                    held_since = time.ticks_ms()
                elif time.ticks_diff(time.ticks_ms(), held_since) >= HOLD_MS:
                    hal.restart()
            elif held_since is not None:
                held_since = None
                err = self.node.switch("TOGGLE")
                if err:
                    self.bad("button", err)

    async def telemetry_loop(self):
        last = time.ticks_ms()
        # Firmware-local (mqtt.json, demo nodes): at most this period, and a first message once online.
        cap = self.mq.get("telemetry_max")
        first = bool(cap)
        while True:
            # Short steps, so a new period from the config takes effect at once.
            await asyncio.sleep_ms(250)
            free = heap.sample()  # every step, so the low-water mark sees short peaks too
            period = min(self.cfg["telemetry_period"], cap) if cap else self.cfg["telemetry_period"]
            if first and self.link.up:
                first = False
            elif time.ticks_diff(time.ticks_ms(), last) < period * 1000:
                continue
            last = time.ticks_ms()
            readings = hal.sensors() if self.sensors else {}
            readings["rssi"] = hal.rssi()
            readings["heap_free"] = free
            readings["heap_min"] = heap.low
            readings["mqtt_dropped"] = self.link.dropped
            readings["bad_input"] = self.bad_input
            t = {"v": 1, "seq": self.telemetry_seq.next(), "uptime": self.uptime(), "readings": readings}
            if clock.valid():
                t["ts"] = clock.now()
            self.send("telemetry", t)

    def start(self):
        self.start_led()
        asyncio.create_task(self.wifi_loop())
        asyncio.create_task(self.logic_loop())
        asyncio.create_task(self.telemetry_loop())
        asyncio.create_task(self.button_loop())

    def start_led(self):
        import led

        asyncio.create_task(led.run(self.led_pattern))

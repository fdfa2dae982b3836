# Planned deep sleep (normal mode): inside the config's sleep window, or for set/sleep's period; only with the
# relay off and no rule in force. It wakes `early` s before a rule that falls due sooner, and at the end.
# Before it sleeps it says so: state with sleep_until, retained status "sleeping", then a clean DISCONNECT so
# the broker keeps that instead of publishing the will's "offline".
import asyncio

import clock
import hal
import store

FILE = "sleep.json"  # the timer's purpose, for the boot that ends the sleep
MIN_S = 2  # a shorter sleep is not worth the reboot
EARLY = 30  # default seconds of waking before a rule (boot, WiFi, broker)
SETTLE_S = 3  # after boot, before a window's sleep: online, the retained config and schedule, commands first


def woke(app):
    """At boot: why a deep sleep ended (the timer's purpose, or the chip's wake reason), into app.wake."""
    s = store.load(FILE, None)
    if s is not None:
        store.remove(FILE)
    if app.cause == "deepsleep":
        w = hal.wake_reason()
        app.wake = s.get("why", w) if (w == "timer" and isinstance(s, dict)) else w


def plan(app, now):
    """(wake epoch, why) if the node should sleep now, else None."""
    n = app.node
    if n.relay or n.until is not None or (app.ota_boot is not None and app.ota_boot.state == "trial"):
        return None
    until, why = app.sleep_cmd, "command"
    if until is not None and until <= now:
        app.sleep_cmd = until = None
    cfg = app.cfg.get("sleep")
    early = cfg.get("early", EARLY) if cfg else EARLY
    if cfg or n.rules:
        import rules  # only with a window or a schedule, as NodeLogic loads it
    if cfg and clock.valid() and app.uptime() >= SETTLE_S:
        rule = {"id": "sleep", "at": cfg["at"], "duration": cfg["duration"], "days": cfg.get("days", rules.DAYS)}
        w = rules.window([rule], clock._tz, now)
        if w is not None and (until is None or w[4] > until):
            until, why = w[4], "window"
    if until is None:
        return None
    if n.rules and clock.valid() and n.logic_enabled and not n.stopped:
        if rules.window(n.rules, clock._tz, now) is not None:
            return None  # a rule's window is open (an "off" rule holds the relay off): it is in force
        nxt = rules.next_start(n.rules, clock._tz, now)
        if nxt is not None and nxt[3] - early < until:
            until, why = nxt[3] - early, "rule"
    return (until, why) if until - now >= MIN_S else None


async def _announce(app, until):
    # The state (with sleep_until) and "sleeping" out and acknowledged, then DISCONNECT: the will stays unsent.
    app.sleep_until = until if clock.valid() else None
    app.node.changed()
    app.link.publish(app.topic("status"), b"sleeping", True, 1, "status")
    for _ in range(100):
        if not app.link.queue and not app.link.inflight:
            break
        await asyncio.sleep_ms(50)
    if plan(app, clock.now()) is None:  # a command while it announced (a switch ON): stay awake
        app.sleep_until = None
        app.on_up()
        return False
    await app.link.bye()  # if the broker is too slow to see it, the will says offline: it sleeps all the same
    return True


async def run(app):
    while True:
        await asyncio.sleep_ms(500)
        p = plan(app, clock.now())
        if p is None:
            continue
        until, why = p
        if app.link.up and not await _announce(app, until):
            continue
        store.save(FILE, {"until": until, "why": why})
        ms = max(0, until - clock.now()) * 1000
        print("sleep: %s, %d ms" % (why, ms))
        hal.deepsleep(ms)

# Planned deep sleep (normal mode): inside the config's sleep window, or for set/sleep's period; only with the
# relay off and no rule in force. It wakes `early` s before a rule that falls due sooner, and at the end.
# Before it sleeps it says so: state with sleep_until, retained status "sleeping", then a clean DISCONNECT so
# the broker keeps that instead of publishing the will's "offline".
import asyncio

import clock
import store
from hal import deepsleep

FILE = "sleep.json"  # the timer's purpose, for the boot that ends the sleep
MIN_S = 2  # a shorter sleep is not worth the reboot
EARLY = 30  # default seconds of waking before a rule (boot, WiFi, broker)
SETTLE_S = 3  # after boot, before a window's sleep: online, the retained config and schedule, commands first


def command(app, c):
    # set/sleep (the commands table's handler in normal mode): the node goes down at its next look
    # (normal.py's slow_loop), if the relay is still off.
    import commands

    commands._only(c, ("v", "for", "id"))
    f = c.get("for")
    if not (isinstance(f, int) and not isinstance(f, bool) and 1 <= f <= 604800):
        raise commands.BadCommand("for must be whole seconds, 1-604800")
    if app.node.relay:
        return "the relay is on: a node sleeps only with it off"
    app.sleep_cmd = clock.now() + f


def check_window(sl):
    """The config's sleep window checked (settings.check_config): an error, or None."""
    if not isinstance(sl, dict) or any(k not in ("at", "duration", "days", "early") for k in sl):
        return "sleep must be an object of at, duration, days, early"
    e = sl.get("early", EARLY)
    if not (isinstance(e, int) and not isinstance(e, bool) and 0 <= e <= 600):
        return "sleep.early must be 0-600 seconds"
    import rulecheck  # the window is checked as a rule is (settings.check_config lets it go after)

    err = rulecheck.check_rule({"id": "sleep", "at": sl.get("at"), "duration": sl.get("duration"),
                                "days": sl.get("days", rulecheck.DAYS)})
    return err.replace("rule sleep: ", "sleep.") if err else None


def woke(app):
    """At boot after a deep sleep: why it ended (the timer's purpose, or the chip's wake reason), in the info."""
    s = store.load(FILE, None)
    if s is not None:
        store.remove(FILE)
    w = deepsleep.wake_reason()
    wake = s.get("why", w) if (w == "timer" and isinstance(s, dict)) else w
    base = app.info

    def info():
        # Only a woken node carries this: the others keep the heap.
        i = base()
        i["wake"] = wake
        return i

    app.info = info


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
    link = app.link
    link.closing = True  # DISCONNECT (link.py); if the broker does not see it, the will says offline: it sleeps
    link._ev.set()
    for _ in range(150):
        if not link.up:
            break
        await asyncio.sleep_ms(20)
    return True


async def check(app):
    """Sleep now if planned (normal.py asks once a second); returns if the node stays awake."""
    p = plan(app, clock.now())
    if p is None:
        return
    until, why = p
    if app.link.up and not await _announce(app, until):
        return
    store.save(FILE, {"until": until, "why": why})
    ms = max(0, until - clock.now()) * 1000
    print("sleep: %s, %d ms" % (why, ms))
    deepsleep.deepsleep(ms)

# Commands on set/<what>: parse, check types, apply, answer with an ack when they carry an id.
import json

import clock

_HELP = "unknown command %s: use switch, logic, stop, restart, time or sleep"
TTL = 60  # seconds a command with sent but no expires stays valid (contracts COMMAND_TTL)


class BadCommand(Exception):
    pass


def _only(cmd, keys):
    for k in cmd:
        if k not in keys:
            raise BadCommand("unknown field %s" % k)


def _ident(value):
    # rulecheck.ident's check, here so that a command does not load the schedule checks (about 4 KB).
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        return False
    for c in value:
        if not ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c in "_.:-"):
            return False
    return True


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x):
    return (isinstance(x, (int, float))) and not isinstance(x, bool)


def _switch(app, c):
    _only(c, ("v", "state", "for", "until", "id", "run_id"))
    state = c.get("state")
    if state not in ("ON", "OFF", "TOGGLE"):
        raise BadCommand("state must be ON, OFF or TOGGLE")
    f = c.get("for")
    if f is not None and not (_is_int(f) and 0 <= f <= 604800):
        raise BadCommand("for must be whole seconds, 0-604800")
    until = c.get("until")
    if until is not None and not (_is_num(until) and 0 <= until < 2 ** 33):
        raise BadCommand("until must be epoch seconds")
    run_id = c.get("run_id")
    if run_id is not None:
        if not _ident(run_id):
            raise BadCommand("run_id must be 1-64 of A-Z a-z 0-9 _ . : -")
        if state == "TOGGLE":
            raise BadCommand("a run must name a target state, never TOGGLE")
    return app.node.switch(state, f, until, run_id)


def _logic(app, c):
    _only(c, ("v", "enabled", "id"))
    if not isinstance(c.get("enabled"), bool):
        raise BadCommand("enabled must be true or false")
    app.node.set_logic(c["enabled"])


def _stop(app, c):
    _only(c, ("v", "resume", "id"))
    if not isinstance(c.get("resume", False), bool):
        raise BadCommand("resume must be true or false")
    app.node.stop(c.get("resume", False))


def _restart(app, c):
    _only(c, ("v", "id"))
    app.restart_soon()


def _time(app, c):
    _only(c, ("v", "ts", "id"))
    ts = c.get("ts")
    if not (_is_num(ts) and 1600000000 <= ts < 2 ** 33):
        raise BadCommand("ts must be epoch seconds")
    was_valid = clock.valid()
    delta = clock.set_backend(ts)
    if delta is None:
        return None  # NTP set the clock: it is better than the backend's
    if not was_valid:
        app.node.shift(delta)
    app.node.changed()
    app.send("info", app.info(), True, 1, "info")  # its clock source is now the backend


def _sleep(app, c):
    import sleep  # loaded by the first set/sleep (or a sleep window in the config)

    return sleep.command(app, c)


_HANDLERS = {"switch": _switch, "logic": _logic, "stop": _stop, "restart": _restart, "time": _time, "sleep": _sleep}


def decode(what, raw):
    """The command (bytes or a view of the receive buffer) as a dict; plain ON/OFF/TOGGLE is accepted for switch."""
    if what == "switch" and len(raw) <= 12:
        plain = bytes(raw).strip().upper()
        if plain in (b"ON", b"OFF", b"TOGGLE"):
            return {"state": plain.decode()}
    try:
        cmd = json.loads(raw)  # straight from the buffer: no copy of the text
    except ValueError:
        raise BadCommand("malformed JSON: send an object such as {\"state\": \"ON\"}")
    if not isinstance(cmd, dict):
        raise BadCommand("payload must be a JSON object")
    return cmd


def _deadline(cmd):
    # Epoch after which the command is void: its expires, else sent + TTL; None without either.
    exp = cmd.pop("expires", None)
    sent = cmd.pop("sent", None)
    for name, x in (("expires", exp), ("sent", sent)):
        if x is not None and not (_is_num(x) and 0 <= x < 2 ** 33):
            raise BadCommand("%s must be epoch seconds" % name)
    if exp is not None:
        return exp
    return sent + TTL if sent is not None else None


def expired(deadline, replayed):
    """Why a command must not run now (it came too late), or None.

    Judged only on valid time; a command without a deadline replayed by the broker after a long
    or unknown outage (``replayed``) is expired too, since nobody can tell how old it is.
    """
    if deadline is not None:
        if clock.valid() and clock.now() > deadline:
            return "expired at %d, node time %d: not executed" % (deadline, clock.now())
        return None
    if replayed:
        return "held by the broker through an outage of over %d s (or a reboot) without sent or expires: not executed" % TTL
    return None


def handle(app, what, raw):
    """Returns (id or None, error or None); the local web API's entry (an expired command is an error there)."""
    cid, _, err = run(app, what, raw)
    return cid, err


def run(app, what, raw, replayed=False):
    """Returns (id or None, "ok" / "error" / "expired", reason or None)."""
    cid = None
    try:
        cmd = decode(what, raw)
        cid = cmd.get("id")
        if cid is not None and not _ident(cid):
            cid = None
            raise BadCommand("id must be 1-64 of A-Z a-z 0-9 _ . : -")
        if cmd.get("v", 1) != 1:
            raise BadCommand("unsupported payload version: v must be 1")
        fn = _HANDLERS.get(what)
        if fn is _sleep and not getattr(app, "SLEEPS", False):
            fn = None  # the download modes do not sleep
        if fn is None:
            raise BadCommand(_HELP % what)
        late = expired(_deadline(cmd), replayed)
        if not late and replayed and what == "time":
            late = "time held by the broker through an outage is stale: not taken"
        if late:
            return cid, "expired", late
        err = fn(app, cmd)
        return cid, "error" if err else "ok", err
    except BadCommand as exc:
        return cid, "error", str(exc)
    except UnicodeError:
        return cid, "error", "payload is not UTF-8 text"

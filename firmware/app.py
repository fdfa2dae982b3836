# Boot: count the boot, note an abnormal reset, then provisioning or normal mode.
import asyncio
import sys

import hal
import heap
import store
from errlog import ErrLog

FW = "0.1.0"
_ABNORMAL = ("watchdog", "panic", "brownout", "crash")


def _on_task_error(loop, context):
    # One global handler: an uncaught task exception is logged to flash, then the node restarts.
    exc = context.get("exception")
    crash_report(exc if exc is not None else Exception(context.get("message")))
    hal.restart()


def crash_report(exc):
    try:
        import io

        buf = io.StringIO()
        sys.print_exception(exc, buf)
        ErrLog().add("crash", repr(exc)[:200], "critical", trace=buf.getvalue())
    except MemoryError:
        sys.print_exception(exc)  # no room to keep it on flash: the console has it, and the restart follows


async def _main(slot):
    asyncio.get_event_loop().set_exception_handler(_on_task_error)
    hal.start()
    boot = store.load("boot.json", None) or {}
    count = boot.get("count", 0) + 1
    store.save("boot.json", {"count": count})
    cause = hal.reset_cause()
    log = ErrLog()
    if cause in _ABNORMAL:
        log.add("reset", "restarted after " + cause, "error", reset_cause=cause)
    import settings  # let go at once: normal mode loads it again when a config arrives

    cfg = settings.merged(store.load("config.json", None))
    del settings
    del sys.modules["settings"]
    hal.init(cfg.get("pins", {}))
    wifi = store.load("wifi.json", None)
    mq = store.load("mqtt.json", None)
    perr = store.load("prov_err.json", None) or {}
    if not wifi or not mq or hal.button() or perr.get("enter"):
        if perr.get("enter"):
            perr["enter"] = False
            store.save("prov_err.json", perr)
        import provision

        await provision.run(FW, ["switch", "temperature", "humidity", "schedule"])
    else:
        heap.reserve()  # while the heap is still whole, before the mode's modules
        if mq.get("tls"):
            import brokertls  # MQTT over TLS, in place of hal.open_connection: a plain node loads none of it

            brokertls.install()
        # Running an OTA slot: its version is the release's (from the image), not this file's.
        fw = slot["image"]["version"] if slot and slot.get("image") else FW
        kw = {"fw": fw, "boot_count": count, "cause": cause, "errlog": log, "cfg": cfg, "wifi": wifi, "mq": mq}
        st = store.load("ota_offer.json", None) or {}
        if isinstance(st.get("offer"), dict):
            import otamode  # normal mode restarted the node to download this offer (docs/ota.md)

            await otamode.run(st, **kw)
        else:
            import normal

            await normal.run(slot=slot, **kw)


def main(slot=None):
    """slot: what main.py's slot_boot() found (None: never updated)."""
    asyncio.run(_main(slot))

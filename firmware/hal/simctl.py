# Control channel of the simulated board: one text command per line, one JSON line back.
# Loaded by hal.start() (hal/sim.py) only when NF_CTL_PORT names a port: a node as deployed has no such module.
import asyncio
import gc
import json

from hal import sim


heap_peak = 0
heap_live_peak = 0


async def sample_heap():
    global heap_peak, heap_live_peak
    n = 0
    while True:
        heap_peak = max(heap_peak, gc.mem_alloc())
        n += 1
        if n % 10 == 0:
            gc.collect()
            heap_live_peak = max(heap_live_peak, gc.mem_alloc())
        await asyncio.sleep_ms(100)


def _state():
    return {
        "relay": sim.relay_on,
        "led": sim.led_pattern,
        "wifi": sim.wifi_ok(),
        "ap": sim.ap_on,
        "time": sim.time_s(),
        "time_valid": sim.rtc_valid(),
        "heap_free": gc.mem_free(),
        "heap_peak": heap_peak,
        "heap_live_peak": heap_live_peak,
    }


def _handle(words):
    cmd = words[0] if words else ""
    arg = words[1] if len(words) > 1 else ""
    if cmd == "wifi":
        sim.set_wifi(arg == "1")
    elif cmd == "button":
        sim.button_held = arg == "1"
    elif cmd == "clock":
        sim.set_time(int(arg))
    elif cmd == "crash":
        # Fault injection: an uncaught exception in a task, as a firmware bug would raise.
        asyncio.create_task(_fault(arg or "injected fault"))
    elif cmd != "get":
        return {"error": "unknown control command %s: use get, wifi, button, clock or crash" % cmd}
    return _state()


async def _fault(text):
    await asyncio.sleep_ms(50)
    raise RuntimeError(text)


async def _client(reader, writer):
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            try:
                out = _handle(line.decode().split())
            except Exception as exc:
                out = {"error": repr(exc)}
            writer.write(json.dumps(out).encode() + b"\n")
            await writer.drain()
    except OSError:
        pass
    writer.close()


async def serve(port):
    await asyncio.start_server(_client, "127.0.0.1", port)


def start():
    port = sim._env("NF_CTL_PORT")
    if port:
        asyncio.create_task(serve(int(port)))
        asyncio.create_task(sample_heap())

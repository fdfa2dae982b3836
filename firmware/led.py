# Heartbeat LED: one blink pattern per condition (on/off milliseconds, repeated).
import asyncio

import hal

PATTERNS = {
    "ok": (60, 1940),
    "no_time": (60, 440, 60, 1440),
    "no_wifi": (100, 100),
    "no_broker": (100, 200, 100, 1600),
    "ap": (100, 100, 500, 500),
    "provisioning": (1000, 1000),
    "updating": (2000, 0),
    "error": (100, 100, 100, 100, 100, 1500),
}


async def run(current):
    """current() names the pattern to show; a change shows within one cycle."""
    while True:
        name = current()
        for i, ms in enumerate(PATTERNS.get(name, PATTERNS["error"])):
            hal.led(1 if i % 2 == 0 else 0, name)
            hal.feed()
            await asyncio.sleep_ms(ms)
            if current() != name:
                break

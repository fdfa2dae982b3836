# Deep sleep (deepsleep(ms), wake_reason()): imported only by firmware/sleep.py, so a node that never sleeps
# keeps the heap it would take.
import sys

if sys.platform == "esp32":
    from hal.esp32sleep import *  # noqa: F401,F403
else:
    from hal.simsleep import *  # noqa: F401,F403

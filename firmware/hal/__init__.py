# The one seam to hardware: application modules import `hal`, never machine/network.
import sys

if sys.platform == "esp32":
    from hal.esp32 import *  # noqa: F401,F403
else:
    from hal.sim import *  # noqa: F401,F403
    from hal.simctl import start  # noqa: F401  the board starts with its control channel for the tests

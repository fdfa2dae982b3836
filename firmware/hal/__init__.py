# The one seam to hardware: application modules import `hal`, never machine/network.
import sys

if sys.platform == "esp32":
    from hal.esp32 import *  # noqa: F401,F403
else:
    from hal.sim import *  # noqa: F401,F403

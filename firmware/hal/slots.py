# A/B application slots: imported only by the OTA download and the boot stub, so a node that is not updating
# keeps the heap they would take (at 110K every kilobyte counts).
import sys

if sys.platform == "esp32":
    from hal.esp32slot import *  # noqa: F401,F403
else:
    from hal.simslot import *  # noqa: F401,F403

# A/B application slots, the download's part (slot_info, slot_begin, slot_write, slot_read): imported only by the
# OTA download, the install and the boot stub, so a node that is not updating keeps the heap they would take.
# Booting, selecting, confirming and rolling back are hal.slotboot, which a download does not load.
import sys

if sys.platform == "esp32":
    from hal.esp32slot import *  # noqa: F401,F403
else:
    from hal.simslot import *  # noqa: F401,F403

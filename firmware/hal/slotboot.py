# A/B application slots, the boot's and the install's part (slot_boot, slot_select, slot_mark_valid,
# slot_rollback): loaded by the boot stub when slots.json exists and by the install, never during a download.
import sys

if sys.platform == "esp32":
    from hal.esp32boot import *  # noqa: F401,F403
else:
    from hal.simboot import *  # noqa: F401,F403

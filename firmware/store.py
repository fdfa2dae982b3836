# JSON files on flash, written atomically: a new file is renamed over the old one.
import json
import os


def load(name, default=None):
    try:
        with open(name) as f:
            return json.load(f)
    except (OSError, ValueError):
        # Missing or corrupt: the caller's default; a half-written file is never renamed in.
        return default


def save(name, obj):
    tmp = name + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    replace(tmp, name)


def replace(tmp, name):
    """Put a fully written ``tmp`` in place of ``name``."""
    try:
        os.rename(tmp, name)  # atomic on littlefs, the ESP32 default
    except OSError:
        # FAT will not rename over a file: not atomic there, so keep littlefs on the device.
        remove(name)
        os.rename(tmp, name)


def remove(name):
    try:
        os.remove(name)
    except OSError:
        pass

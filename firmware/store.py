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
    _replace(tmp, name)


def save_parts(name, parts):
    """Write already encoded pieces (bytes) as one file, atomically like save()."""
    tmp = name + ".tmp"
    with open(tmp, "wb") as f:
        for p in parts:
            f.write(p)
    _replace(tmp, name)


def _replace(tmp, name):
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

# nfi1 images (modules laid out by `nodefleet ota build`): the file table and unpacking into a directory.
# Loaded only to install an update (otainst.install), so a download does not hold it.
import json
import os
import struct

from hal import slots


def image_files(slot=None):
    # [[path, offset, size], ...] from the image's own header (the inactive slot unless named).
    head = bytearray(8)
    slots.slot_read(0, head, slot)
    if head[:4] != b"NFI1":
        raise ValueError("not an nfi1 image")
    buf = bytearray(struct.unpack(">I", head[4:])[0])
    slots.slot_read(8, buf, slot)
    return json.loads(bytes(buf))["files"]


def _mkdirs(path):
    part = ""
    for name in path.split("/")[:-1]:
        part = part + "/" + name if part else name
        try:
            os.mkdir(part)
        except OSError:
            pass  # already there


def unpack(dest, buf, slot=None):
    # Copy the image's modules into directory dest through buf; returns how many.
    files = image_files(slot)
    mv = memoryview(buf)
    for path, off, size in files:
        if path.startswith("/") or ".." in path.split("/"):
            raise ValueError("bad path in image: %s" % path)
        name = dest + "/" + path
        _mkdirs(name)
        with open(name, "wb") as f:
            done = 0
            while done < size:
                n = min(len(buf), size - done)
                slots.slot_read(off + done, mv[:n], slot)
                f.write(mv[:n])
                done += n
    return len(files)

# Free heap after a collection, and its low-water mark since boot (both in telemetry).
import gc

MAX_IN = 4096  # the largest JSON payload the node takes (config, schedule); larger ones are dropped unread
FRAME_MAX = MAX_IN + 20  # an OTA frame: 20-byte header + a 4 KiB block (docs/ota.md), read in place like any payload
RX = None  # the one receive buffer: a payload, its topic of up to 128 bytes, a packet id
low = 0


def reserve():
    """Allocate RX before normal mode imports its modules: later, with the heap cut up, 4 KB in one piece
    may not exist. Provisioning mode never needs it."""
    global RX
    # Collected first, here at the top of the stack: the boot's garbage would otherwise cut up the heap that
    # this buffer and the compile of normal mode's modules need in large pieces.
    gc.collect()
    if RX is None:
        RX = bytearray(FRAME_MAX + 132)
    gc.collect()


def sample():
    """Collect, then note the free heap; the low-water mark is the least seen since boot."""
    global low
    gc.collect()
    free = gc.mem_free()
    if not low or free < low:
        low = free
    return free

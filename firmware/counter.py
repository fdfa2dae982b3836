# Sequence numbers that never repeat across reboots: blocks are reserved on flash.
import store

_FILE = "seq.json"
BLOCK = 1000


class Counter:
    def __init__(self, name):
        self.name = name
        saved = store.load(_FILE, {})
        self.value = saved.get(name, 0)
        self._limit = self.value
        self._reserve()

    def _reserve(self):
        # Persist the end of the next block before handing out any number inside it.
        saved = store.load(_FILE, {})
        self._limit = self.value + BLOCK
        saved[self.name] = self._limit
        store.save(_FILE, saved)

    def next(self):
        if self.value >= self._limit:
            self._reserve()
        n = self.value
        self.value += 1
        return n

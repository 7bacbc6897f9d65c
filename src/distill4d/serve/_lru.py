"""A small thread-safe least-recently-used cache (the server's setup caches)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable

__all__ = ["LRU"]


class LRU(OrderedDict):
    """At most ``size`` entries; :meth:`get_or` returns a key's value, making it on a miss."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.lock = threading.Lock()

    def get_or(self, key: Any, make: Callable[[], Any]) -> Any:
        """The value of ``key``; on a miss ``make()`` (outside the lock), kept, the oldest entries dropped."""
        with self.lock:
            if key in self:
                self.move_to_end(key)
                return self[key]
        value = make()
        with self.lock:
            self[key] = value
            while len(self) > self.size:
                self.popitem(last=False)
        return value

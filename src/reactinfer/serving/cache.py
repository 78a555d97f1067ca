"""Response cache: LRU over (variant, operation, normalised input); exact hits only."""
from __future__ import annotations

import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


def normalise(text: str) -> str:
    """Unicode NFC and collapsed whitespace: encoders split on whitespace, so texts that
    differ only there give the same tokens (and the same answer)."""
    return " ".join(unicodedata.normalize("NFC", text).split())


class ResponseCache:
    """Thread-safe LRU. Keys are built by the caller and include the variant, so an answer
    from a cheaper variant is never returned as the best one's."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        if self.size == 0:
            return None
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: Any) -> None:
        if self.size == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

"""The delays between retries of a connection (``ReconnectDelay``), below both the worker's
services and the dashboard, which use them."""

from __future__ import annotations

import random

__all__ = ("ReconnectDelay",)


class ReconnectDelay:
    """Delays that double from ``first`` up to ``cap`` seconds, jittered by ±20 % so that the
    workers of a fleet do not retry in step."""

    def __init__(self, first: float = 0.1, cap: float = 10.0) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def delay(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.cap)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self.first

"""Two small helpers for waiting, below both the worker's services and the dashboard, which use
them: a counter whose growth can be awaited (``Signal``) and the delays between retries
(``Backoff``)."""

from __future__ import annotations

import asyncio
import random

__all__ = ("Backoff", "Signal")


class Signal:
    """A counter whose growth can be awaited."""

    def __init__(self) -> None:
        self.count = 0
        self._changed: asyncio.Event | None = None

    def fire(self, n: int = 1) -> None:
        self.count += n
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_for(self, count: int) -> None:
        """Returns once ``count`` has been reached."""
        while self.count < count:
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()


class Backoff:
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

"""Internal events that tests and embedding apps can await (jobs claimed, outcomes recorded)."""

from __future__ import annotations

import asyncio

__all__ = ("Signal",)


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

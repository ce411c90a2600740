"""Waiting for a state of the database that no event of ours announces."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 60) -> None:
    """Polls `check` (another process's doing, a lock wait in the server) until it holds,
    failing after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def within(event: Awaitable[object], what: str, seconds: float = 60) -> None:
    """Awaits an event of ours (an events hub's wait_for), failing after `seconds`: a worker that died
    must fail the test, not hang it."""
    try:
        await asyncio.wait_for(event, seconds)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None

"""Tasks whose outcomes are large: results over a limit, exceptions of many megabytes
(tests/test_outcome_bounds.py; worker processes load them with ``--app tests.outcome_tasks``)."""

from __future__ import annotations

import asyncio
import threading

from jobmaster_async import task


def _text(size: int) -> str:
    return "x" * size


@task(retries=2)
async def big_result(size: int) -> str:
    return _text(size)


@task(retries=2)
def big_result_in_thread(size: int) -> str:
    return _text(size)


@task(retries=2, executor="process")
def big_result_in_process(size: int) -> str:
    return _text(size)


def _huge_message(lines: int) -> str:
    """A message of many lines: formatting one of 50 MB whole takes seconds."""
    return "a line of a huge message\n" * lines


@task(retries=1)
async def huge_message(lines: int) -> None:
    raise ValueError(_huge_message(lines))


@task(retries=1)
def huge_message_in_thread(lines: int) -> None:
    raise ValueError(_huge_message(lines))


@task(retries=1, executor="process")
def huge_message_in_process(lines: int) -> None:
    raise ValueError(_huge_message(lines))


class SlowToRead(Exception):
    """An exception whose message is read only once the event loop it was raised on has run a
    callback: read on that loop, it waits in vain (up to ``patience`` seconds) and says so."""

    def __init__(self, loop: asyncio.AbstractEventLoop, patience: float) -> None:
        super().__init__()
        self.loop, self.patience = loop, patience

    def __str__(self) -> str:
        loop_ran = threading.Event()
        self.loop.call_soon_threadsafe(loop_ran.set)
        if loop_ran.wait(self.patience):
            return "read while the event loop ran"
        return "read on the event loop, blocking it"


@task
async def slow_to_read(patience: float) -> None:
    raise SlowToRead(asyncio.get_running_loop(), patience)

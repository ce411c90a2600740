"""Runs one task function: async inline, sync in a thread or a process; timeouts enforced.

Threads cannot be killed. A sync task in a thread that times out is left to run on: its job keeps
its slot (and stays ``running``, so its ``process_limit`` count holds) until the thread returns,
then fails with ``TimeoutError`` (and is retried only then). Threads are daemon threads, so one
that never returns does not keep the process from exiting.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_process

from ..tasks import TaskDefinition

__all__ = ("DaemonThreadPool", "Outcome", "cancel_requested", "run_task")

logger = logging.getLogger(__name__)


class _CancelFlag:
    """Set when a sync task's job is cancelled or times out (a threading.Event would do, at the
    price of a lock and a condition per job: about 2 us each on the drain's hot path)."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


_cancel_flag: contextvars.ContextVar[_CancelFlag | None] = contextvars.ContextVar("jobmaster_cancel_flag", default=None)


def cancel_requested() -> bool:
    """True inside a sync task whose job was cancelled (or timed out): check it now and then
    and return early, since a thread cannot be stopped from outside."""
    flag = _cancel_flag.get()
    return flag is not None and flag.is_set()


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended: a JSON result, or an error."""

    ok: bool
    result: Any = None
    error_type: str | None = None
    message: str | None = None
    traceback: str | None = None

    @classmethod
    def failure(cls, exc: BaseException) -> Outcome:
        return cls(
            ok=False,
            error_type=type(exc).__qualname__,
            message=str(exc) or type(exc).__qualname__,
            traceback="".join(traceback.format_exception(exc)),
        )


SUCCESS_WITHOUT_RESULT = Outcome(ok=True)


class DaemonThreadPool:
    """A small pool of daemon threads that runs sync tasks and reports to the event loop."""

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self._queue: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]]] = (
            queue.SimpleQueue()
        )
        self._threads = 0
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        """Runs ``fn`` in a thread; the future, of the running ``loop``, gets its result."""
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            self._queue.put((loop, future, fn))
            if self._idle == 0 and self._threads < self.max_workers:
                self._threads += 1
                threading.Thread(target=self._work, name="jobmaster-task", daemon=True).start()
            elif self._idle > 0:
                self._idle -= 1
        return future

    def _work(self) -> None:
        while True:
            loop, future, fn = self._queue.get()
            try:
                result = fn()
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle_future, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle_future, future, result, None)
            with self._lock:
                self._idle += 1


def _settle_future(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


async def run_task(
    definition: TaskDefinition,
    arguments: dict[str, Any],
    threads: DaemonThreadPool,
    on_abandon: Callable[[asyncio.Future[Any]], None] | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Outcome:
    """Runs the task and returns its outcome; never raises for the task's own errors.

    If the caller is cancelled while a sync task's thread still runs, ``on_abandon`` gets the
    thread's future (so the caller can hold the job's slot until it is done), and the
    cancellation propagates. ``loop`` is the running loop, when the caller has it at hand: on
    Python 3.11 looking it up costs a getpid() system call (5 % of a sync drain's main thread)."""
    func = definition.func
    try:
        if definition.is_async and definition.timeout is None:  # no cancel scope to set up
            return _success(definition, await func(**arguments))
        if definition.is_async:
            with anyio.move_on_after(definition.timeout) as scope:
                result = await func(**arguments)
        elif definition.executor == "process":
            with anyio.move_on_after(definition.timeout) as scope:
                result = await anyio.to_process.run_sync(functools.partial(func, **arguments), cancellable=True)
        else:
            return await _run_in_thread(definition, arguments, threads, on_abandon, loop or asyncio.get_running_loop())
    except Exception as exc:
        return Outcome.failure(exc)
    if scope.cancelled_caught:
        return _timed_out(definition)
    return _success(definition, result)


async def _run_in_thread(
    definition: TaskDefinition,
    arguments: dict[str, Any],
    threads: DaemonThreadPool,
    on_abandon: Callable[[asyncio.Future[Any]], None] | None,
    loop: asyncio.AbstractEventLoop,
) -> Outcome:
    flag = _CancelFlag()
    context = contextvars.copy_context()
    context.run(_cancel_flag.set, flag)
    future = threads.submit(functools.partial(context.run, functools.partial(definition.func, **arguments)), loop)
    try:
        if definition.timeout is None:  # no cancel scope to set up
            return _success(definition, await asyncio.shield(future))
        with anyio.move_on_after(definition.timeout) as scope:
            result = await asyncio.shield(future)
        if scope.cancelled_caught:
            flag.set()
            logger.warning(
                "task %s timed out after %gs; its thread runs on and keeps its slot until it returns",
                definition.key,
                definition.timeout,
            )
            await asyncio.wait([future])
            if not future.cancelled():
                future.exception()  # retrieved: what an abandoned run raises is of no interest
            return _timed_out(definition)
    except asyncio.CancelledError:
        if not future.done():
            flag.set()
            if on_abandon is not None:
                on_abandon(future)
        raise
    except Exception as exc:
        return Outcome.failure(exc)
    return _success(definition, result)


def _timed_out(definition: TaskDefinition) -> Outcome:
    return Outcome.failure(TimeoutError(f"task {definition.key} timed out after {definition.timeout:g}s"))


def _success(definition: TaskDefinition, result: Any) -> Outcome:
    if result is None:
        return SUCCESS_WITHOUT_RESULT
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        return Outcome.failure(TypeError(f"task {definition.key} returned a value that is not JSON: {exc}"))
    return Outcome(ok=True, result=result)

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
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import anyio
import anyio.to_process
import anyio.to_thread

from ..storable import UndecodableJSON, dumps_storable, unstorable_reason
from ..tasks import TaskDefinition
from .bounds import INLINE_CHARS, OutcomeLimits, failure_texts, formats_quickly, small_value

__all__ = ("DaemonThreadPool", "Outcome", "OutcomeLimits", "ResultTooLarge", "cancel_requested", "run_task")

logger = logging.getLogger(__name__)


class _CancelFlag:
    """Set when a sync task's job is cancelled or times out (a threading.Event would do, at the
    price of a lock and a condition per job on the drain's hot path)."""

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
    """How a run ended: a JSON result (with its JSON text, checked storable), or an error.
    A ``final`` failure is not retried (the job's data, not the run, is at fault)."""

    ok: bool
    result: Any = None
    result_json: str = "null"
    error_type: str | None = None
    message: str | None = None
    traceback: str | None = None
    final: bool = False

    @classmethod
    def failure(cls, exc: BaseException, *, final: bool = False, limits: OutcomeLimits | None = None) -> Outcome:
        """The failure ``exc`` caused, its texts bounded (worker.bounds) and made storable whatever
        the exception holds. Seconds for an exception of many megabytes: off the event loop then
        (``failure_of``)."""
        error_type, message, trace = failure_texts(exc, limits or DEFAULT_LIMITS)
        return cls(ok=False, error_type=error_type, message=message, traceback=trace, final=final)


SUCCESS_WITHOUT_RESULT = Outcome(ok=True)
DEFAULT_LIMITS = OutcomeLimits()


class UnstorableResult(TypeError):
    """A task returned a value PostgreSQL cannot store: its job fails for good."""


class ResultTooLarge(ValueError):
    """A task returned a result whose JSON is over ``max_result_bytes``: its job fails for good."""


class UnreadableArguments(ValueError):
    """A job's stored arguments cannot be decoded here: it fails for good, alone."""


class RaisedInThread(Exception):
    """Carries a BaseException that is not an Exception (SystemExit, GeneratorExit, a
    CancelledError of the task's own...) from a task's thread to the event loop. Set on a future
    as it is, asyncio would throw it into the awaiting coroutines: a GeneratorExit thrown in closes
    every coroutine between the future and the task instead of reaching our handler."""

    def __init__(self, raised: BaseException) -> None:
        super().__init__(repr(raised))
        self.raised = raised


class DaemonThreadPool:
    """A small pool of daemon threads that runs sync tasks and reports to the event loop."""

    def __init__(self, max_workers: int, outcome_limits: OutcomeLimits | None = None) -> None:
        self.max_workers = max_workers
        #: the bounds of the outcomes of the jobs run with this pool (run_task reads them here,
        #: the one object of the worker's that every caller passes)
        self.outcome_limits = outcome_limits or DEFAULT_LIMITS
        self._queue: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]]] = (
            queue.SimpleQueue()
        )
        self._threads = 0
        self._idle = 0
        self._lock = threading.Lock()

    def grow_to(self, max_workers: int) -> None:
        """Allows at least ``max_workers`` threads (run_forever's concurrency)."""
        with self._lock:
            self.max_workers = max(self.max_workers, max_workers)

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
            except Exception as exc:
                loop.call_soon_threadsafe(_settle_future, future, None, exc)
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle_future, future, None, RaisedInThread(exc))
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
    """Runs the task and returns its outcome, bounded (``threads.outcome_limits``: worker.bounds);
    never raises for the task's own errors.

    If the caller is cancelled while a sync task's thread still runs, ``on_abandon`` gets the
    thread's future (so the caller can hold the job's slot until it is done), and the
    cancellation propagates. ``loop`` is the running loop, when the caller has it at hand: on
    Python 3.11 looking it up costs a getpid() system call (see benchmarks/README.md).

    Whatever the task raises fails the job, BaseException included (SystemExit, KeyboardInterrupt,
    GeneratorExit, a CancelledError of its own): only a cancellation of the caller's task (the
    worker's shutdown or a cancel of the job) propagates.

    The outcome is made where the task ran: in its thread or its process for sync tasks; for
    async ones on the event loop when the value is small, else in a thread (``settle``,
    ``failure_of``), so that no result or exception blocks the loop however large."""
    if type(arguments) is not dict:
        return _unreadable(definition, arguments)
    func, limits = definition.func, threads.outcome_limits
    try:
        if definition.is_async and definition.timeout is None:  # no cancel scope to set up
            result = await func(**arguments)
            return SUCCESS_WITHOUT_RESULT if result is None else await settle(definition, result, limits)
        if definition.is_async:
            with anyio.move_on_after(definition.timeout) as scope:
                result = await func(**arguments)
        elif definition.executor == "process":
            with anyio.move_on_after(definition.timeout) as scope:
                made = await anyio.to_process.run_sync(
                    functools.partial(_outcome_in_process, func, definition.key, arguments, limits), cancellable=True
                )
            if not scope.cancelled_caught:
                return await _decoded(made)
        else:
            return await _run_in_thread(definition, arguments, threads, on_abandon, loop or asyncio.get_running_loop())
    except Exception as exc:
        return await failure_of(exc, limits)
    except BaseException as exc:
        if _cancelled_by_caller(exc):
            raise
        return await failure_of(exc, limits)
    if scope.cancelled_caught:
        return _timed_out(definition)
    return SUCCESS_WITHOUT_RESULT if result is None else await settle(definition, result, limits)


async def settle(definition: TaskDefinition, result: Any, limits: OutcomeLimits) -> Outcome:
    """The outcome of a result returned on the event loop: serialised there when small, else in
    a thread."""
    if small_value(result):
        return _success(definition.key, result, limits)
    return await anyio.to_thread.run_sync(_success, definition.key, result, limits)


async def failure_of(exc: BaseException, limits: OutcomeLimits, *, final: bool = False) -> Outcome:
    """The outcome of an exception caught on the event loop: formatted there when it is plainly
    small, else in a thread (formatting a huge message would stall the loop)."""
    if formats_quickly(exc):
        return Outcome.failure(exc, final=final, limits=limits)
    return await anyio.to_thread.run_sync(functools.partial(Outcome.failure, exc, final=final, limits=limits))


def _outcome_of(func: Callable[..., Any], key: str, arguments: dict[str, Any], limits: OutcomeLimits) -> Outcome:
    """Runs a sync task (``func`` of the task ``key``) where it is (its thread, its process) and
    makes its outcome there."""
    try:
        result = func(**arguments)
    except BaseException as exc:  # SystemExit, GeneratorExit... fail the job too
        return Outcome.failure(exc, limits=limits)
    return SUCCESS_WITHOUT_RESULT if result is None else _success(key, result, limits)


def _outcome_in_process(
    func: Callable[..., Any], key: str, arguments: dict[str, Any], limits: OutcomeLimits
) -> Outcome:
    """``_outcome_of`` in a worker process: the result travels back as its JSON text only (one
    copy through the pipe, not two); ``_decoded`` reads it back."""
    outcome = _outcome_of(func, key, arguments, limits)
    return replace(outcome, result=None) if outcome.ok else outcome


async def _decoded(outcome: Outcome) -> Outcome:
    """An outcome from a worker process with its result read back from its JSON text (in a
    thread when it is long)."""
    if not outcome.ok or outcome.result_json == "null":
        return outcome
    text = outcome.result_json
    result = json.loads(text) if len(text) <= INLINE_CHARS else await anyio.to_thread.run_sync(json.loads, text)
    return replace(outcome, result=result)


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
    limits = threads.outcome_limits
    future = threads.submit(
        functools.partial(context.run, _outcome_of, definition.func, definition.key, arguments, limits), loop
    )
    try:
        if definition.timeout is None:  # no cancel scope to set up
            outcome: Outcome = await asyncio.shield(future)
            return outcome
        with anyio.move_on_after(definition.timeout) as scope:
            outcome = await asyncio.shield(future)
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
    except RaisedInThread as exc:  # not from the task (its own are its outcome): the thread's machinery
        return Outcome.failure(exc.raised, limits=limits)
    except asyncio.CancelledError:  # the caller's: the task's own are its outcome
        if not future.done():
            flag.set()
            if on_abandon is not None:
                on_abandon(future)
        raise
    except Exception as exc:
        return await failure_of(exc, limits)
    return outcome


def _cancelled_by_caller(exc: BaseException) -> bool:
    """Is ``exc`` a cancellation of the running task (asked for by its caller), rather than a
    CancelledError the task's code raised itself?"""
    if not isinstance(exc, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _timed_out(definition: TaskDefinition) -> Outcome:
    return Outcome.failure(TimeoutError(f"task {definition.key} timed out after {definition.timeout:g}s"))


def _success(key: str, result: Any, limits: OutcomeLimits) -> Outcome:
    """The outcome of a result (not None): its JSON text, checked storable and within
    ``max_result_bytes``. As long as json.dumps takes: in a thread when it may be large."""
    text = dumps_storable(result)
    if text is None:
        reason = unstorable_reason(result) or "it is not JSON"
        return Outcome.failure(
            UnstorableResult(f"task {key} returned a value PostgreSQL cannot store: {reason}"), final=True
        )
    if len(text) > limits.max_result_bytes:  # json.dumps writes ASCII: characters are bytes
        return Outcome.failure(
            ResultTooLarge(
                f"task {key} returned a result of {len(text):,} bytes of JSON, over the limit of "
                f"{limits.max_result_bytes:,} bytes (max_result_bytes)"
            ),
            final=True,
        )
    return Outcome(ok=True, result=result, result_json=text)


def _unreadable(definition: TaskDefinition, arguments: Any) -> Outcome:
    detail = arguments.error if isinstance(arguments, UndecodableJSON) else f"not an object: {arguments!r:.200}"
    return Outcome.failure(
        UnreadableArguments(f"job of task {definition.key}: its arguments cannot be read: {detail}"), final=True
    )

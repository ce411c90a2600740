"""Tasks the tests run (type key ``tasks_for_tests``)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

from jobmaster_async import Dependency, cancel_requested, same, task
from jobmaster_async.tracing import current_context


@task
async def add(a: int, b: int = 1) -> int:
    return a + b


@task
def multiply(x: float, y: float) -> float:
    return x * y


@task
def explode(reason: str) -> None:
    raise ValueError(f"exploded: {reason}")


@task(retries=2)
def flaky(key: str) -> None:
    raise RuntimeError(f"flaky {key}")


@task
async def echo(value: dict, flag: bool = False, items: list | None = None) -> dict:  # type: ignore[type-arg]
    return {"value": value, "flag": flag, "items": items}


@task
async def every_kind(
    n: int,
    x: float = 1.5,
    s: str = "s",
    flag: bool = False,
    mode: Literal["a", "b", 3] = "a",
    maybe: int | None = None,
    anything: Any = None,
    obj: dict | None = None,  # type: ignore[type-arg]
) -> None: ...


@task(process_limit=2)
async def limited(n: int) -> int:
    await asyncio.sleep(0)
    return n


@task(process_units=4)
async def heavy(n: int) -> int:
    return n


@task(write_all=["colour", "size"])
async def paint(item: str, colour: Literal["red", "green"], size: Literal[1, 2, 3] = 1) -> str:
    return f"{item}-{colour}-{size}"


# A dependency on every colour: the "ALL" fan-out parent of paint
@task(dependencies=Dependency(paint, item=same, colour="ALL"))
async def painted_in_every_colour(item: str) -> str:
    return item


# A dependency with "ALL" whose children cannot be created (numbered.number is unknown)
@task
async def numbered(number: int) -> int:
    return number


@task(write_all=["colour"], dependencies=Dependency(numbered))
async def tile(colour: Literal["red", "green"]) -> str:
    return colour


@task(dependencies=Dependency(tile, colour="ALL"))
async def all_tiles() -> None: ...


@task
def untyped(thing, other=None):  # type: ignore[no-untyped-def]
    return [thing, other]


@task(retries=3)
async def steady(a: int) -> int:
    return a


# Dependencies: `same` arithmetic
@task
async def base(n: int) -> int:
    return n


@task(dependencies=Dependency(base, 1, n=same * 2))
async def doubled(n: int) -> int:
    return n


@task(dependencies=Dependency(base, 1, n=same / 2))
async def halved(n: int) -> int:
    return n


# Fan-in: many dependents on one shared dependency
@task
async def shared_setup(key: str) -> str:
    return key


@task(dependencies=Dependency(shared_setup, key=same))
async def fan(i: int, key: str) -> int:
    return i


# Failure propagation through two levels
@task
def broken(key: str) -> None:
    raise RuntimeError(f"broken {key}")


@task(dependencies=Dependency(broken, key=same))
async def above_broken(key: str) -> None: ...


@task(dependencies=Dependency(above_broken, key=same))
async def top_of_broken(key: str) -> None: ...


# A chain of CHAIN_DEPTH tasks: link_k depends on link_(k-1); each records when it ran.
CHAIN_DEPTH = 20


def _make_link(k: int) -> None:
    async def link(run: str) -> int:
        return k

    link.__name__ = link.__qualname__ = f"link_{k}"
    dependency = Dependency(f"tasks_for_tests.link_{k - 1}", 1, run=same) if k else None
    task(dependencies=dependency)(link)


for _k in range(CHAIN_DEPTH):
    _make_link(_k)


# The dispatcher
@task
async def sleepy(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@task(timeout=0.2, retries=1)
async def async_too_slow(seconds: float) -> None:
    await asyncio.sleep(seconds)


@task(timeout=0.2, retries=1)
def thread_too_slow(seconds: float) -> None:
    time.sleep(seconds)


@task(timeout=0.5, retries=1, executor="process")
def process_too_slow(seconds: float) -> None:
    time.sleep(seconds)


@task(executor="process")
def in_process(n: int) -> int:
    return n * 2


@task
def thread_until_cancelled(limit: float) -> str:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if cancel_requested():
            return "noticed"
        time.sleep(0.01)
    return "timed out"


# A poison job: it kills the worker process that runs it, every time (tests/test_poison.py)
@task
def poison(key: str) -> None:
    os._exit(1)


# Worker processes: every execution appends a line to a file (O_APPEND: whole lines)
def _append(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


@task
async def record(path: str, key: int) -> None:
    _append(path, str(key))


@task(retries=3)
async def record_after(path: str, key: int, seconds: float) -> None:
    await asyncio.sleep(seconds)
    _append(path, str(key))


@task(process_limit=2)
async def record_limited(path: str, key: int) -> None:
    _append(path, f"start {key} {time.time()}")
    await asyncio.sleep(0.01)
    _append(path, f"end {key} {time.time()}")


# Hostile outcomes: values PostgreSQL cannot store, exceptions no task should raise


def _unstorable(kind: str) -> Any:
    makers: dict[str, Callable[[], Any]] = {
        "nan": lambda: {"points": [1.0, float("nan")]},
        "inf": lambda: float("inf"),
        "nul": lambda: {"text": "a\x00b"},
        "surrogate": lambda: ["\ud800"],
        "object": lambda: {"when": object()},
        "huge": lambda: 10**5000,
        "fine": lambda: {"ok": [1, "two", 3.5]},
    }
    return makers[kind]()


@task
async def returns(kind: str) -> Any:
    return _unstorable(kind)


@task
def returns_in_thread(kind: str) -> Any:
    return _unstorable(kind)


@task(retries=2)
async def raises_dirty(text: str) -> None:
    raise ValueError(f"bad\x00{text}\ud800")


def _base_exception(kind: str) -> BaseException:
    return {
        "SystemExit": SystemExit(3),
        "KeyboardInterrupt": KeyboardInterrupt(),
        "GeneratorExit": GeneratorExit(),
        "CancelledError": asyncio.CancelledError(),
    }[kind]


@task
async def raises_base(kind: str) -> None:
    raise _base_exception(kind)


@task
def raises_base_in_thread(kind: str) -> None:
    raise _base_exception(kind)


@task
def record_when_gate_opens(path: str, key: int, gate: str) -> None:
    """A thread that runs until the file ``gate`` exists."""
    while not os.path.exists(gate):
        time.sleep(0.01)
    _append(path, str(key))


# The chaos suite (tests/chaos.py): one line per execution, with its process and times
@task
async def chaos_run(path: str, key: int, seconds: float) -> None:
    started = time.time()
    await asyncio.sleep(seconds)
    _append(path, f"{key} {os.getpid()} {started:.6f} {time.time():.6f}")


# Linking races (test_client_transactions): a dependency that, when the test made a Gate for its
# key, runs until the test opens it; and a task that depends on it
class Gate:
    """``entered`` is set when the job starts; the job returns once ``opened`` is set."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()


GATES: dict[str, Gate] = {}


@task
async def gated(key: str) -> str:
    gate = GATES.get(key)
    if gate is not None:
        gate.entered.set()
        await gate.opened.wait()
    return key


@task(dependencies=Dependency(gated, key=same))
async def after_gate(key: str, n: int = 0) -> int:
    return n


# Retention: a task of its own, and one kept forever
@task(retention=timedelta(hours=1))
async def short_lived(n: int) -> int:
    return n


@task(retention=None)
async def kept_forever(n: int) -> int:
    return n


# Traces (tests/test_tracing.py): the W3C trace context current while the task runs, as a job
# inserted there would store it ([traceparent, tracestate]; nulls: none)
@task
async def context_async(key: str) -> list[str | None]:
    return list(current_context())


@task
def context_in_thread(key: str) -> list[str | None]:
    return list(current_context())

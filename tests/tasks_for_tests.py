"""Tasks the tests run (type key ``tasks_for_tests``)."""

from __future__ import annotations

import asyncio
from typing import Literal

from jobmaster_async import task


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


@task
def untyped(thing, other=None):  # type: ignore[no-untyped-def]
    return [thing, other]


@task(retries=3)
async def steady(a: int) -> int:
    return a

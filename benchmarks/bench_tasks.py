"""Tasks the benchmarks run (type key ``bench_tasks``)."""

from __future__ import annotations

import os
import time
from typing import Any

from jobmaster_async import Dependency, same, task


def realistic_arguments(i: int) -> dict[str, Any]:
    """Arguments as applications pass them: a path and an e-mail (dots), a float, a nested object."""
    return {
        "i": i,
        "path": f"exports/2026-12/run-{i}.csv",
        "ratio": i / 7,
        "meta": {"user": f"user{i}@example.org", "tags": ["nightly", "eu-west.1"], "limits": {"rows": 10_000}},
    }


@task
async def noop_async(i: int, path: str = "", ratio: float = 0.0, meta: dict[str, Any] | None = None) -> None:
    return None


@task
def noop_sync(i: int, path: str = "", ratio: float = 0.0, meta: dict[str, Any] | None = None) -> None:
    return None


@task
async def probe(i: int, path: str = "", ratio: float = 0.0, meta: dict[str, Any] | None = None) -> float:
    """Returns when it started (wall clock), for insert -> start latency."""
    return time.time()


# Dependencies: a chain of CHAIN_DEPTH tasks, and fan-in on one shared dependency
CHAIN_DEPTH = 20


def _make_link(k: int) -> None:
    async def link(run: int) -> None:
        return None

    link.__name__ = link.__qualname__ = f"link_{k}"
    dependency = Dependency(f"bench_tasks.link_{k - 1}", 1, run=same) if k else None
    task(dependencies=dependency)(link)


for _k in range(CHAIN_DEPTH):
    _make_link(_k)


@task
async def shared(run: int) -> None:
    return None


@task(dependencies=Dependency(shared, 1, run=same))
async def fan(run: int, i: int) -> None:
    return None


def _append_start(i: int) -> None:
    with open(os.environ["BENCH_PROBE_FILE"], "a") as f:
        f.write(f"{i} {time.time()}\n")


@task
async def probe_file(i: int) -> None:
    """Appends ``i time`` to the file named by BENCH_PROBE_FILE (the comparison harness)."""
    _append_start(i)

"""Tasks the benchmarks run (type key ``bench_tasks``)."""

from __future__ import annotations

import time

from jobmaster_async import task


@task
async def noop_async(i: int) -> None:
    return None


@task
def noop_sync(i: int) -> None:
    return None


@task
async def probe(i: int) -> float:
    """Returns when it started (wall clock), for insert -> start latency."""
    return time.time()

"""Tasks of the soak benchmark (type key ``soak_tasks``; ``python -m benchmarks.soak``).

Every task keeps its finished jobs for one minute (``RETENTION``, stored by deploy), so that the
worker's background pruning deletes them during the run. ``COUNTS`` counts, in the worker
process, what the tasks did: ``benchmarks.soak_worker`` writes it out for the harness.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from jobmaster_async import Dependency, same, task

#: how long the soak's finished jobs are kept
RETENTION = timedelta(minutes=1)
#: how long a complete ``base`` job satisfies a dependency on it (0.01 hours: 36 s, shorter than
#: the retention, so the retention decides when it goes)
FRESH_HOURS = 0.01

#: per process: "base", "work", "dependent": runs that returned; "raised": first attempts of
#: ``fail_once`` jobs that raised on purpose
COUNTS: Counter[str] = Counter()
#: the ``fail_once`` jobs (by ``i``) that raised and whose retry has not run yet in this process
_failed_once: set[int] = set()


class Planned(Exception):
    """The failure of a ``fail_once`` job's first attempt."""


@task(retention=RETENTION)
async def base(key: int) -> None:
    """What ``dependent`` jobs depend on: created by their insert unless a fresh one exists."""
    COUNTS["base"] += 1


@task(retries=1, retention=RETENTION)
async def work(
    i: int, path: str = "", ratio: float = 0.0, meta: dict[str, Any] | None = None, fail_once: bool = False
) -> None:
    """A no-op; with ``fail_once`` it raises on its first attempt in this process (and its one
    retry completes)."""
    if fail_once and i not in _failed_once:
        _failed_once.add(i)
        COUNTS["raised"] += 1
        raise Planned(f"job {i} fails once")
    _failed_once.discard(i)  # the set holds only the retries still to come
    COUNTS["work"] += 1


@task(dependencies=Dependency(base, FRESH_HOURS, key=same), retention=RETENTION)
async def dependent(key: int, i: int, path: str = "", ratio: float = 0.0, meta: dict[str, Any] | None = None) -> None:
    """A no-op that needs a ``base`` job with the same key, complete within the last 36 s."""
    COUNTS["dependent"] += 1

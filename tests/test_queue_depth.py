"""active_counts(): how many jobs wait, are blocked and run, read from indexes."""

from __future__ import annotations

import asyncpg

from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier
from tests.conftest import inner_plans

ACTIVE = ("waiting", "blocked", "running")


async def test_active_counts_agree_with_counts(jm: JobMaster) -> None:
    cancelled = await jm.insert_job("tasks_for_tests", "add", 1, {"a": 0})
    assert await jm.cancel(cancelled)
    await jm.insert_job("tasks_for_tests", "doubled", 1, {"n": 4})  # base(8) waits, doubled is blocked
    await jm.insert_jobs("tasks_for_tests", "add", 1, [{"a": i} for i in range(1, 4)])
    running = [await jm.pop_job(), await jm.pop_job()]
    assert all(job is not None and job.task_key in ("add", "base") for job in running)

    depth = await jm.active_counts()

    assert depth == {"waiting": 2, "blocked": 1, "running": 2}
    counts = await jm.counts()
    assert depth == {status: counts.get(status, 0) for status in ACTIVE}
    assert counts["cancelled"] == 1
    for job in running:
        assert job is not None
        await job.execute()


async def test_active_counts_read_indexes_only(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """Finished jobs stay in jobs, and until vacuum their entries in the partial indexes are
    dead. A bitmap scan would visit the table for each of them on every call; an index-only scan
    does not, whatever the statistics say (here: taken while every job waited)."""
    schema = quote_identifier(jm.schema)
    await jm.insert_jobs("tasks_for_tests", "add", 1, [{"a": i} for i in range(3000)])
    await conn.execute(f"ALTER TABLE {schema}.jobs SET (autovacuum_enabled = off)")
    await conn.execute(f"ANALYZE {schema}.jobs")
    await conn.execute(f"UPDATE {schema}.jobs SET status = 'complete' WHERE (arguments->>'a')::int >= 10")

    async with inner_plans(conn) as plans:
        depth = await conn.fetchrow(f"SELECT * FROM {schema}.active_counts()")

    assert depth is not None and dict(depth) == {"waiting": 10, "blocked": 0, "running": 0}
    scans = [p for p in plans if "Aggregate" in p]
    assert scans and all("Index Only Scan" in p and "Bitmap" not in p and "Seq Scan" not in p for p in scans)

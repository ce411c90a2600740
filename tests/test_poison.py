"""A poison job does not spend its neighbours' rescues (DESIGN 9 "Lost workers", issue 24 point 4).

Jobs put back from a lost worker are suspects of it; a rescue is charged only to the one job that
was isolated when its worker died (the only suspect running there, or its only job); suspects run
one per worker; a lost worker that heartbeats again clears the suspicion of its waiting jobs.
The worker-process test waits for what other processes do by polling the database, with a
deadline."""

from __future__ import annotations

import subprocess
import uuid
from collections import Counter
from pathlib import Path

import asyncpg

from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier
from tests.polling import until
from tests.processes import worker_process

#: rescues within seconds; a lapse long enough that a live worker of a loaded machine keeps its jobs
FAST_LAPSE = (
    "--heartbeat-interval", "0.5", "--heartbeat-lapse", "4", "--rescue-interval", "0.5", "--poll-interval", "0.5",
)  # fmt: skip


async def test_a_poison_job_fails_alone_and_its_neighbours_complete(jm: JobMaster, dsn: str, tmp_path: Path) -> None:
    """One job that kills its worker (os._exit) and three innocent ones claimed beside it by one
    worker, restarted until the poison job fails: the innocent ones complete, uncharged; only the
    poison job reaches its rescues (3, the default), failing at its worker's fifth death (the first
    one, beside the others, is charged to none of them)."""
    out = tmp_path / "out.txt"
    innocents = await jm.insert_jobs(
        "tasks_for_tests", "record_after", 1, [{"path": str(out), "key": i, "seconds": 1.5} for i in range(3)]
    )
    poison = await jm.insert_job("tasks_for_tests", "poison", 1, {"key": "p"})
    deaths = 0

    async def settled() -> bool:
        jobs = [await jm.get_job(i) for i in [*innocents, poison]]
        return all(j is not None and j.status in ("complete", "failed") for j in jobs)

    while not await settled():
        assert deaths <= 6, "the poison job should have failed by now"
        with worker_process(dsn, jm.schema, "--concurrency", "4", *FAST_LAPSE) as worker:

            async def dead_or_settled(process: subprocess.Popen[bytes] = worker) -> bool:
                return process.poll() is not None or await settled()

            await until(dead_or_settled, "the worker to die or the jobs to finish", seconds=90)
            deaths += worker.poll() is not None
    assert deaths == 5  # one uncharged loss, three charged rescues, the fourth charged loss fails it
    job = await jm.get_job(poison)
    assert job is not None and job.status == "failed" and job.rescues == 4  # losses charged to it
    assert job.message is not None and "its worker was lost 4 times (rescues=3)" in job.message
    reasons = [h["reason"] for h in await jm.history(poison)]
    assert reasons == ["inserted", *["claimed", "rescued"] * 4, "claimed", "failed"]
    for job_id in innocents:
        job = await jm.get_job(job_id)
        assert job is not None and job.status == "complete" and job.rescues == 0
        rescued = [h for h in await jm.history(job_id) if h["reason"] == "rescued"]
        assert len(rescued) == 1 and rescued[0]["worker_id"] is not None  # which worker was lost
    assert Counter(out.read_text().split()) == Counter(str(i) for i in range(3))  # each once


async def _hold(jm: JobMaster, count: int) -> list[uuid.UUID]:
    """Jobs claimed by jm's own worker, whose heartbeat the test then lapses."""
    held = []
    for _ in range(count):
        job = await jm.pop_job()
        assert job is not None
        held.append(job.job_id)
    return held


async def _lose(jm: JobMaster, conn: asyncpg.Connection, worker_id: uuid.UUID) -> int:
    s = quote_identifier(jm.schema)
    lapsed = f"UPDATE {s}.workers SET heartbeat_at = now() - interval '1 hour' WHERE worker_id = $1"
    await conn.execute(lapsed, worker_id)
    rescued: int = await conn.fetchval(f"SELECT {s}.rescue_jobs()")
    return rescued


async def _suspects(jm: JobMaster, conn: asyncpg.Connection) -> dict[uuid.UUID, uuid.UUID | None]:
    rows = await conn.fetch(f"SELECT job_id, suspect_of FROM {quote_identifier(jm.schema)}.jobs")
    return {r["job_id"]: r["suspect_of"] for r in rows}


async def test_a_lost_worker_that_heartbeats_again_clears_the_suspicion_of_its_jobs(
    jm: JobMaster, conn: asyncpg.Connection
) -> None:
    """A database outage, not a death: the jobs put back are suspects of the worker, uncharged
    (two ran there), rescued in the history; the worker's next heartbeat clears them, another
    worker's does not."""
    ids = await jm.insert_jobs("tasks_for_tests", "add", 1, [{"a": 1}, {"a": 2}])
    assert sorted(await _hold(jm, 2)) == sorted(ids)
    assert await _lose(jm, conn, jm.worker_id) == 2
    assert await _suspects(jm, conn) == {i: jm.worker_id for i in ids}
    for job_id in ids:
        job = await jm.get_job(job_id)
        assert job is not None and job.status == "waiting" and job.rescues == 0
        last = (await jm.history(job_id))[-1]
        assert last["reason"] == "rescued" and last["worker_id"] == jm.worker_id
    s = quote_identifier(jm.schema)
    await conn.execute(f"SELECT {s}.heartbeat($1, 'elsewhere', 1, 30)", uuid.uuid4())
    assert await _suspects(jm, conn) == {i: jm.worker_id for i in ids}  # another worker's beat
    await jm._worker.beat()  # the lost worker is back
    assert await _suspects(jm, conn) == {i: None for i in ids}


async def test_a_job_alone_on_its_lost_worker_is_charged(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """Nothing else ran there: the rescue is charged to it at once (DESIGN 9.1: the (N+1)-th
    loss fails a job that kills its worker every time, as before suspects)."""
    job_id = await jm.insert_job("tasks_for_tests", "add", 1, {"a": 1})
    await _hold(jm, 1)
    assert await _lose(jm, conn, jm.worker_id) == 1
    job = await jm.get_job(job_id)
    assert job is not None and job.status == "waiting" and job.rescues == 1


async def test_a_worker_claims_at_most_one_suspect_at_a_time(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """Beside ordinary jobs, whatever the limit, as the worker claims (the plain claim leaves the
    claims to claim_jobs() while a suspect is claimable), and through claim_jobs() called alone;
    a suspect that completes lets its worker take the next one."""
    s = quote_identifier(jm.schema)
    suspects = await jm.insert_jobs("tasks_for_tests", "add", 1, [{"a": i} for i in range(3)])
    await _hold(jm, 3)
    assert await _lose(jm, conn, jm.worker_id) == 3
    ordinary = await jm.insert_jobs("tasks_for_tests", "add", 1, [{"a": i} for i in range(10, 13)])
    add = await conn.fetchval(f"SELECT task_id FROM {s}.tasks WHERE task_key = 'add'")
    worker = uuid.uuid4()

    async def claim_fast(limit: int) -> list[asyncpg.Record]:
        return await jm._store.claim(worker, [add], limit, 100)

    slow = await conn.fetchrow(jm._store.sql["claim_jobs_fast"], worker, [add], 3, 100)
    assert slow["job_ids"] == [] and slow["slow"] is True  # a suspect is claimable: claim_jobs() claims
    first = await claim_fast(3)
    assert sorted(r["job_id"] in suspects for r in first) == [False, False, True]  # within the limit
    rest = await claim_fast(10)  # the last ordinary job, and no suspect: it runs one already
    assert sorted(r["job_id"] for r in [*first, *rest] if r["job_id"] not in suspects) == sorted(ordinary)
    assert len(rest) == 1
    held = next(r for r in first if r["job_id"] in suspects)
    await conn.fetchval(
        f"SELECT {s}.complete_jobs($1, $2, $3, $4::jsonb[])", worker, [held["job_id"]], [held["attempts"]], ["2"]
    )
    second = await claim_fast(10)
    assert [r["job_id"] in suspects for r in second] == [True]  # the next suspect, once it completed

    # claim_jobs(), its fast way (no limits): another worker takes the last suspect, alone
    other = uuid.uuid4()
    rows = await conn.fetch(f"SELECT * FROM {s}.claim_jobs($1, $2, 10, 100)", other, [add])
    assert [r["job_id"] in suspects for r in rows] == [True]
    assert await conn.fetch(f"SELECT * FROM {s}.claim_jobs($1, $2, 10, 100)", other, [add]) == []
    # no suspect waits: the plain claim claims again
    plain = await conn.fetchrow(jm._store.sql["claim_jobs_fast"], worker, [add], 3, 100)
    assert plain["slow"] is False


async def test_the_limited_claim_takes_at_most_one_suspect(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """claim_jobs()'s way for process_units (heavy: 4 units each, a budget of 8 for 3 jobs)."""
    s = quote_identifier(jm.schema)
    suspects = await jm.insert_jobs("tasks_for_tests", "heavy", 1, [{"n": i} for i in range(2)])
    await _hold(jm, 2)
    assert await _lose(jm, conn, jm.worker_id) == 2
    ordinary = await jm.insert_job("tasks_for_tests", "heavy", 1, {"n": 10})
    heavy = await conn.fetchval(f"SELECT task_id FROM {s}.tasks WHERE task_key = 'heavy'")
    worker = uuid.uuid4()
    rows = await conn.fetch(f"SELECT * FROM {s}.claim_jobs($1, $2, 3, 8)", worker, [heavy])
    assert sorted(r["job_id"] in suspects for r in rows) == [False, True]
    assert ordinary in [r["job_id"] for r in rows]
    assert await conn.fetch(f"SELECT * FROM {s}.claim_jobs($1, $2, 3, 8)", worker, [heavy]) == []


async def test_suspects_a_worker_may_not_take_do_not_hide_a_limited_tasks_other_jobs(
    jm: JobMaster, conn: asyncpg.Connection
) -> None:
    """A process_limit task (2) whose next jobs are suspects, claimed by a worker that runs a
    suspect already: it takes the ordinary jobs behind them (the suspects used to fill the task's
    cap, hide them, and leave the worker claiming again and again)."""
    s = quote_identifier(jm.schema)
    suspects = await jm.insert_jobs("tasks_for_tests", "limited", 5, [{"n": 1}, {"n": 2}])
    other = await jm.insert_job("tasks_for_tests", "add", 1, {"a": 1})
    await _hold(jm, 3)
    assert await _lose(jm, conn, jm.worker_id) == 3  # three suspects, uncharged
    ordinary = await jm.insert_jobs("tasks_for_tests", "limited", 1, [{"n": i} for i in range(10, 13)])
    add = await conn.fetchval(f"SELECT task_id FROM {s}.tasks WHERE task_key = 'add'")
    limited = await conn.fetchval(f"SELECT task_id FROM {s}.tasks WHERE task_key = 'limited'")
    worker = uuid.uuid4()
    first = await conn.fetch(f"SELECT * FROM {s}.claim_jobs($1, $2, 1, 100)", worker, [add])
    assert [r["job_id"] for r in first] == [other]  # the worker runs a suspect
    rows = await conn.fetch(f"SELECT * FROM {s}.claim_jobs($1, $2, 5, 100)", worker, [limited])
    taken = [r["job_id"] for r in rows]
    assert len(taken) == 2 and set(taken) <= set(ordinary) and not set(taken) & set(suspects)


async def test_a_heartbeat_does_not_wait_for_a_lock_on_one_of_its_suspects(
    jm: JobMaster, dsn: str, conn: asyncpg.Connection
) -> None:
    s = quote_identifier(jm.schema)
    ids = await jm.insert_jobs("tasks_for_tests", "add", 1, [{"a": 1}, {"a": 2}])
    await _hold(jm, 2)
    assert await _lose(jm, conn, jm.worker_id) == 2
    locker = await asyncpg.connect(dsn)
    try:
        async with locker.transaction():
            await locker.execute(f"SELECT 1 FROM {s}.jobs WHERE job_id = $1 FOR NO KEY UPDATE", ids[0])
            await conn.execute("SET statement_timeout = '5s'")
            try:
                await conn.execute(f"SELECT {s}.heartbeat($1, 'node', 1, 30)", jm.worker_id)
            finally:
                await conn.execute("RESET statement_timeout")
            assert await _suspects(jm, conn) == {ids[0]: jm.worker_id, ids[1]: None}  # the locked one next time
        await conn.execute(f"SELECT {s}.heartbeat($1, 'node', 1, 30)", jm.worker_id)
        assert await _suspects(jm, conn) == {ids[0]: None, ids[1]: None}
    finally:
        await locker.close()


async def test_a_lost_workers_jobs_are_judged_together_when_one_is_locked(
    jm: JobMaster, dsn: str, conn: asyncpg.Connection
) -> None:
    """Two jobs on a lost worker, one locked by another transaction when the rescue runs: none is
    rescued then (judged alone, the other would look isolated and be charged); both are, uncharged,
    once the lock is gone."""
    s = quote_identifier(jm.schema)
    ids = await jm.insert_jobs("tasks_for_tests", "add", 1, [{"a": 1}, {"a": 2}])
    await _hold(jm, 2)
    locker = await asyncpg.connect(dsn)
    try:
        async with locker.transaction():
            await locker.execute(f"SELECT 1 FROM {s}.jobs WHERE job_id = $1 FOR NO KEY UPDATE", ids[0])
            assert await _lose(jm, conn, jm.worker_id) == 0
        assert await conn.fetchval(f"SELECT {s}.rescue_jobs()") == 2
    finally:
        await locker.close()
    for job_id in ids:
        job = await jm.get_job(job_id)
        assert job is not None and job.status == "waiting" and job.rescues == 0

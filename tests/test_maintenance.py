"""The maintenance service: heartbeats, and the rescue of lost workers' jobs on a schedule."""

from __future__ import annotations

import asyncio

import asyncpg

from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier
from jobmaster_async.events import Count, Events, Rescued
from jobmaster_async.settings import JobMasterSettings
from jobmaster_async.worker.maintenance import Heartbeat, Maintenance, Rescuer
from jobmaster_async.worker.outage import Outage
from tests.polling import within


async def test_a_lost_workers_job_is_rescued_by_the_rescue_loop(jm: JobMaster, conn: asyncpg.Connection) -> None:
    job_id = await jm.insert_job("tasks_for_tests", "add", 1, {"a": 1})
    assert await jm.pop_job() is not None  # held by jm, whose heartbeat then lapses
    await conn.execute(f"UPDATE {quote_identifier(jm.schema)}.workers SET heartbeat_at = now() - interval '1 hour'")
    maintenance = Maintenance(
        JobMasterSettings(rescue_interval=0.05),
        beat=jm._worker.beat,
        rescue=jm._store.rescue_jobs,
        last_beat=lambda: 0.0,  # this process never beat: nothing of its own to protect
        events=Events(),
    )
    running = asyncio.create_task(Rescuer(maintenance, Outage(Events())).run())
    try:
        await within(maintenance.events.wait_for(Rescued, 1), "the rescue")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    job = await jm.get_job(job_id)
    assert job is not None and job.status == "waiting" and job.rescues == 1


async def test_rescue_if_due_runs_once_per_interval_and_never_with_a_lapsed_own_heartbeat() -> None:
    calls = 0

    async def rescue() -> int:
        nonlocal calls
        calls += 1
        return 0

    async def beat() -> None: ...

    last_beat = 0.0
    maintenance = Maintenance(JobMasterSettings(rescue_interval=3600), beat, rescue, lambda: last_beat, Events())
    assert await maintenance.rescue_if_due() == 0 and calls == 1
    assert await maintenance.rescue_if_due() == 0 and calls == 1  # not due again for an hour
    last_beat = 1.0  # beat long ago (monotonic time 1): our own heartbeat lapsed
    assert await maintenance.rescue() == 0 and calls == 1


async def test_the_heartbeat_loop_beats_every_interval() -> None:
    beats = Count()

    async def beat() -> None:
        beats.add()

    async def rescue() -> int:
        return 0

    maintenance = Maintenance(JobMasterSettings(heartbeat_interval=0.01), beat, rescue, lambda: 0.0, Events())
    running = asyncio.create_task(Heartbeat(maintenance, Outage(Events())).run())
    try:
        await within(beats.wait_for(3), "three heartbeats")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_the_rescue_loop_rescues_only_while_the_worker_may() -> None:
    """run_forever's rescue loop asks first: not while its own heartbeat is stale, nor in the half
    lapse after it was cut off (worker.dispatcher)."""
    asked, rescues = Count(), Count()
    allowed = False

    def may_rescue() -> bool:
        asked.add()
        return allowed

    async def rescue() -> int:
        rescues.add()
        return 0

    async def beat() -> None: ...

    maintenance = Maintenance(JobMasterSettings(rescue_interval=0.01), beat, rescue, lambda: 0.0, Events())
    running = asyncio.create_task(Rescuer(maintenance, Outage(Events()), may_rescue).run())
    try:
        await within(asked.wait_for(3), "the loop to ask three times")
        assert rescues.count == 0
        allowed = True
        await within(rescues.wait_for(1), "a rescue once allowed")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

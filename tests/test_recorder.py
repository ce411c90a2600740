"""The recorder service: outcomes written in bounded batches, kept and retried across faults."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence

import asyncpg

from jobmaster_async import JobMaster
from jobmaster_async.events import Events, JobFinished, OutageBegan, Recovered
from jobmaster_async.worker.executors import Outcome
from jobmaster_async.worker.outage import Outage
from jobmaster_async.worker.outcomes import Claim
from jobmaster_async.worker.recorder import RECORD_BATCH, RECORD_BATCH_BYTES, Recorder
from tests.polling import within


async def _claims(jm: JobMaster, count: int) -> list[Claim]:
    await jm.insert_jobs("tasks_for_tests", "add", 1, [{"a": i} for i in range(count)])
    return await jm._worker.claim(count, 100_000)


async def test_outcomes_are_recorded_in_batches_of_at_most_record_batch(jm: JobMaster) -> None:
    claims = await _claims(jm, 2 * RECORD_BATCH + 50)
    statements: list[int] = []

    async def record(outcomes: Sequence[tuple[Claim, Outcome]]) -> set[uuid.UUID]:
        statements.append(len(outcomes))
        return await jm._worker.record(outcomes)

    handed_back: list[JobFinished] = []
    recorder = Recorder(record, Outage(Events()))
    recorder.events.subscribe(JobFinished, handed_back.append)
    for claim in claims:
        recorder.add(claim, Outcome(ok=True, result=claim.arguments["a"], result_json=str(claim.arguments["a"])))
    await recorder.flush()
    assert statements == [RECORD_BATCH, RECORD_BATCH, 50]
    assert recorder.events.count(JobFinished) == len(claims) and recorder.pending == 0
    assert {e.job_id for e in handed_back} == {c.job_id for c in claims}
    assert await jm.counts() == {"complete": len(claims)}


async def test_outcomes_are_kept_while_the_database_fails_and_recorded_after(jm: JobMaster) -> None:
    claims = await _claims(jm, 3)
    failures = 2

    async def record(outcomes: Sequence[tuple[Claim, Outcome]]) -> set[uuid.UUID]:
        nonlocal failures
        if failures:
            failures -= 1
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return await jm._worker.record(outcomes)

    outage = Outage(Events())
    recorder = Recorder(record, outage)
    running = asyncio.create_task(recorder.run())
    try:
        for claim in claims:
            recorder.add(claim, Outcome(ok=True, result=None, result_json="null"))
        await within(recorder.events.wait_for(JobFinished, 3), "the outcomes to be recorded")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert (outage.events.count(OutageBegan), outage.events.count(Recovered)) == (1, 1)
    assert await jm.counts() == {"complete": 3}


async def test_batches_are_bounded_in_bytes_too(jm: JobMaster) -> None:
    """Outcomes of 3 MiB each: two per statement (RECORD_BATCH_BYTES, 8 MiB), not all of them."""
    claims = await _claims(jm, 5)
    statements: list[int] = []

    async def record(outcomes: Sequence[tuple[Claim, Outcome]]) -> set[uuid.UUID]:
        statements.append(len(outcomes))
        return await jm._worker.record(outcomes)

    recorder = Recorder(record, Outage(Events()))
    text = json.dumps("x" * (3 * 1024 * 1024))
    for claim in claims:
        recorder.add(claim, Outcome(ok=True, result=None, result_json=text))
    await recorder.flush()
    assert 3 * len(text) > RECORD_BATCH_BYTES >= 2 * len(text)
    assert statements == [2, 2, 1] and await jm.counts() == {"complete": 5}

"""Outcomes bounded before they are sent (issue 24, point 3): a result over max_result_bytes fails
its job for good, saying so; huge messages and tracebacks are cut with a note and the job retried
as usual, formatted off the event loop; a recorder batch that is refused or times out is split so
that one outcome never blocks the others; outcomes recorded by an earlier try are not reported as
dropped; statement and lock timeouts are named as such."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

import tests.outcome_tasks  # noqa: F401  (registers the tasks the jm fixture deploys)
from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier
from jobmaster_async.errors import ConfigurationError
from jobmaster_async.events import Events, JobFinished, OutageBegan, Recovered
from jobmaster_async.worker import executors
from jobmaster_async.worker.bounds import MAX_MESSAGE_BYTES, MAX_TRACEBACK_BYTES, truncated
from jobmaster_async.worker.executors import Outcome
from jobmaster_async.worker.outage import Outage
from jobmaster_async.worker.outcomes import Claim, record_outcomes
from jobmaster_async.worker.recorder import SLOW_OUTCOME_BYTES, Recorder
from tests.conftest import deployed, worker
from tests.polling import until, within
from tests.processes import worker_process
from tests.tasks_for_tests import GATES, Gate

LIMIT = 1000


@pytest.fixture
async def small_limit(dsn: str, schema_name: str) -> AsyncIterator[JobMaster]:
    """A deployed JobMaster whose results may have 1,000 bytes of JSON at most."""
    async with deployed(dsn, schema_name, retry_backoff=0.0, max_result_bytes=LIMIT) as master:
        yield master


# -- the texts -------------------------------------------------------------------------------------


def test_truncated_keeps_the_limit_and_says_how_much_went() -> None:
    assert truncated("abc", 3) == "abc"
    assert truncated("abcdef", 3) == "abc… [truncated: 3 bytes]"
    assert truncated("é" * 4, 3) == "é… [truncated: 6 bytes]"  # cut between characters, in bytes
    assert truncated("0123456789", 4, keep_tail=True) == "01\n… [truncated: 6 bytes] …\n89"


@pytest.mark.parametrize("value", [0, 3, 1.5, "4", True])
def test_max_result_bytes_must_be_a_whole_number_of_at_least_4(dsn: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match="max_result_bytes"):
        JobMaster(dsn, max_result_bytes=value)  # type: ignore[arg-type]


# -- results ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("task_key", ["big_result", "big_result_in_thread", "big_result_in_process"])
async def test_a_result_over_max_result_bytes_fails_its_job_for_good(small_limit: JobMaster, task_key: str) -> None:
    jm = small_limit
    big = await jm.insert_job("outcome_tasks", task_key, 1, {"size": 5000})
    fits = await jm.insert_job("outcome_tasks", task_key, 0, {"size": LIMIT - 2})  # its JSON: 1,000 bytes
    others = await jm.insert_jobs("tasks_for_tests", "add", 0, [{"a": i} for i in range(5)])
    async with worker(jm, concurrency=4):
        await within(jm.events.wait_for(JobFinished, 7), "the jobs to finish")
    job = await jm.get_job(big)
    assert job is not None and (job.status, job.attempts, job.error_type) == ("failed", 1, "ResultTooLarge")
    assert f"a result of 5,002 bytes of JSON, over the limit of {LIMIT:,} bytes" in (job.message or "")
    done = await jm.get_job(fits)
    assert done is not None and done.status == "complete" and done.result == "x" * (LIMIT - 2)
    assert [(await jm.get_job(i)).status for i in others] == ["complete"] * 5  # type: ignore[union-attr]


async def test_pop_job_fails_a_result_over_the_limit_too(small_limit: JobMaster) -> None:
    job_id = await small_limit.insert_job("outcome_tasks", "big_result", 0, {"size": 2000})
    assert await small_limit.run() == 1
    job = await small_limit.get_job(job_id)
    assert job is not None and job.status == "failed" and job.error_type == "ResultTooLarge"


# -- messages and tracebacks -----------------------------------------------------------------------


@pytest.mark.parametrize("task_key", ["huge_message", "huge_message_in_thread", "huge_message_in_process"])
async def test_a_huge_error_message_is_cut_with_a_note_and_the_job_retried(jm: JobMaster, task_key: str) -> None:
    lines = 2_000_000  # 50 MB
    job_id = await jm.insert_job("outcome_tasks", task_key, 0, {"lines": lines})
    async with worker(jm, concurrency=2):
        await within(jm.events.wait_for(JobFinished, 2), "both attempts")  # retries=1: retried as usual
    job = await jm.get_job(job_id)
    assert job is not None and (job.status, job.attempts, job.error_type) == ("failed", 2, "ValueError")
    size = len("a line of a huge message\n") * lines
    message = job.message or ""
    assert message.endswith(f"… [truncated: {size - MAX_MESSAGE_BYTES} bytes]")
    assert len(message.encode()) < MAX_MESSAGE_BYTES + 100
    trace = job.traceback or ""
    assert "… [truncated: " in trace and len(trace.encode()) < MAX_TRACEBACK_BYTES + 100
    assert trace.startswith("Traceback") and "ValueError: a line of a huge message" in trace


async def test_an_async_tasks_huge_exception_is_formatted_off_the_event_loop(
    jm: JobMaster, monkeypatch: pytest.MonkeyPatch
) -> None:
    formatted_in: list[tuple[bool, int]] = []  # (on the event loop's thread?, message length)
    loop_thread = threading.get_ident()
    format_texts = executors.failure_texts  # type: ignore[attr-defined]

    def spy(exc: BaseException, limits: executors.OutcomeLimits) -> tuple[str, str, str | None]:
        formatted_in.append((threading.get_ident() == loop_thread, len(str(exc))))
        return format_texts(exc, limits)

    monkeypatch.setattr(executors, "failure_texts", spy)
    huge = await jm.insert_job("outcome_tasks", "huge_message", 0, {"lines": 2_000_000})
    small = await jm.insert_job("tasks_for_tests", "raises_dirty", 0, {"text": "x"})  # retries=2
    async with worker(jm, concurrency=2):
        await within(jm.events.wait_for(JobFinished, 5), "the attempts")
    assert sorted(formatted_in) == [(False, 50_000_000)] * 2 + [(True, len("bad\x00x\ud800"))] * 3
    assert [(await jm.get_job(i)).status for i in (huge, small)] == ["failed", "failed"]  # type: ignore[union-attr]


async def test_the_event_loop_runs_while_an_async_tasks_exception_is_read(jm: JobMaster) -> None:
    """The exception's message is read only once the loop ran a callback: read on the loop, it
    would wait in vain and say so."""
    job_id = await jm.insert_job("outcome_tasks", "slow_to_read", 0, {"patience": 20})
    async with worker(jm, concurrency=1):
        await within(jm.events.wait_for(JobFinished, 1), "the job")
    job = await jm.get_job(job_id)
    assert job is not None and job.status == "failed" and job.message == "read while the event loop ran"


# -- recording -------------------------------------------------------------------------------------


async def _claims(jm: JobMaster, count: int) -> list[Claim]:
    """Claims of jobs of a task with retries (steady: 3)."""
    await jm.insert_jobs("tasks_for_tests", "steady", 0, [{"a": i} for i in range(count)])
    return await jm._worker.claim(count, 100_000)


async def test_an_outcome_the_driver_refuses_fails_alone_and_keeps_its_retry(jm: JobMaster) -> None:
    """A message the checks did not make storable (a lone surrogate: the driver cannot encode
    it): the batch is split, the others are recorded, the refused failure is recorded without
    its texts, and retried as it would have been."""
    claims = await _claims(jm, 6)
    retried = Outcome(ok=False, error_type="ValueError", message="bad \ud800", traceback="tb \ud800")
    outcomes = [(c, Outcome(ok=True, result=1, result_json="1")) for c in claims[:3]]
    outcomes += [(c, Outcome(ok=False, error_type="KeyError", message="k", traceback="t")) for c in claims[3:5]]
    outcomes.append((claims[5], retried))
    recorded = await record_outcomes(jm._store, jm.worker_id, outcomes, 0.0)
    assert recorded == {c.job_id for c in claims}
    statuses = [(await jm.get_job(c.job_id)).status for c in claims]  # type: ignore[union-attr]
    assert statuses == ["complete"] * 3 + ["waiting"] * 3  # failures retried
    job = await jm.get_job(claims[5].job_id)
    assert job is not None and job.error_type == "ValueError" and job.traceback is None
    assert (job.message or "").startswith("bad \\ud800 [its message and traceback could not be stored")


async def test_a_batch_that_times_out_is_split_until_the_slow_outcome_is_alone(jm: JobMaster) -> None:
    """A statement carrying the large outcome times out (here: said so by the record function);
    the recorder halves its batches, records every other outcome, and records the large one, which
    timed out alone again after the others were recorded, as a failure saying so."""
    claims = await _claims(jm, 9)
    slow = claims[4]
    statements: list[int] = []

    async def record(outcomes: Sequence[tuple[Claim, Outcome]]) -> set[uuid.UUID]:
        statements.append(len(outcomes))
        if any(claim is slow and outcome.ok for claim, outcome in outcomes):
            raise TimeoutError
        return await jm._worker.record(outcomes)

    recorder = Recorder(record, Outage(Events()))
    running = asyncio.create_task(recorder.run())
    try:
        big = "x" * (SLOW_OUTCOME_BYTES + 1)
        for claim in claims:
            text = json.dumps(big) if claim is slow else "1"
            recorder.add(claim, Outcome(ok=True, result=None, result_json=text))
        await within(recorder.events.wait_for(JobFinished, 9), "the outcomes to be recorded")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert statements == [9, 4, 4, 2, 1, 1, 1, 1, 1, 1, 1]  # halved to the slow one, then the others, it again
    job = await jm.get_job(slow.job_id)
    assert job is not None and job.status == "failed" and job.error_type == "UnstorableOutcome"
    assert "could not be recorded in time" in (job.message or "")
    others = [(await jm.get_job(c.job_id)).status for c in claims if c is not slow]  # type: ignore[union-attr]
    assert others == ["complete"] * 8
    assert recorder.batch_limit > 1  # grows again once statements succeed


async def test_outcomes_an_earlier_try_recorded_are_not_reported_dropped(
    jm: JobMaster, caplog: pytest.LogCaptureFixture
) -> None:
    """The red team's table lock: a try timed out, yet committed; the retry finds the jobs no
    longer held. Only the job really fenced out (here: cancelled while it ran) is reported."""
    claims = await _claims(jm, 3)
    outcomes = [(c, Outcome(ok=True, result=1, result_json="1")) for c in claims]
    await record_outcomes(jm._store, jm.worker_id, outcomes[:2], 0.0)  # the try whose answer was lost
    await jm.cancel(claims[2].job_id)  # fenced out
    with caplog.at_level(logging.WARNING, "jobmaster_async"):
        recorded = await record_outcomes(jm._store, jm.worker_id, outcomes, 0.0)
    assert recorded == {claims[0].job_id, claims[1].job_id}
    dropped = [r.getMessage() for r in caplog.records if "dropped: the job is no longer held" in r.getMessage()]
    assert len(dropped) == 1 and str(claims[2].job_id) in dropped[0]


@pytest.mark.parametrize(
    ("setting", "named"), [("statement_timeout", "statement timeout"), ("lock_timeout", "lock timeout")]
)
async def test_statement_and_lock_timeouts_are_named_as_such(
    jm: JobMaster, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture, setting: str, named: str
) -> None:
    """A SHARE lock on the jobs table holds the worker's statements (its settings: a 200 ms
    timeout) as a job finishes: the outage says which timeout, and once the lock goes the outcome
    is recorded and none is reported dropped."""
    key = uuid.uuid4().hex
    gate = GATES[key] = Gate()
    job_id = await jm.insert_job("tasks_for_tests", "gated", 0, {"key": key})
    timed = JobMaster(jm.dsn, schema=jm.schema, connect_kwargs={"server_settings": {setting: "200"}})
    try:
        async with worker(timed, concurrency=1):
            await asyncio.wait_for(gate.entered.wait(), 60)
            async with conn.transaction():
                await conn.execute(f"LOCK TABLE {quote_identifier(jm.schema)}.jobs IN SHARE MODE")
                gate.opened.set()
                await within(timed.events.wait_for(OutageBegan, 1), "the timeouts")
            await within(timed.events.wait_for(JobFinished, 1), "the outcome")
            await within(timed.events.wait_for(Recovered, 1), "the recovery")
    finally:
        del GATES[key]
        await timed.close()
    job = await jm.get_job(job_id)
    assert job is not None and job.status == "complete"
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(m.startswith(f"{named} (") for m in messages), messages
    assert not any("database unreachable" in m or "dropped" in m for m in messages), messages


# -- a worker process ------------------------------------------------------------------------------


async def test_a_worker_process_fails_a_too_big_result_and_completes_the_rest(jm: JobMaster) -> None:
    normal = await jm.insert_jobs("tasks_for_tests", "add", 0, [{"a": i} for i in range(40)])
    big = await jm.insert_job("outcome_tasks", "big_result_in_thread", 5, {"size": 3_000_000})
    options = ("--app", "tests.outcome_tasks", "-c", "4", "--max-result-bytes", "1000000")
    with worker_process(jm.dsn, jm.schema, *options):

        async def finished() -> bool:
            counts = await jm.counts()
            return counts.get("complete", 0) + counts.get("failed", 0) == len(normal) + 1

        await until(finished, "every job to finish")
    assert await jm.counts() == {"complete": len(normal), "failed": 1}
    job = await jm.get_job(big)
    assert job is not None and (job.status, job.attempts, job.error_type) == ("failed", 1, "ResultTooLarge")
    assert "a result of 3,000,002 bytes of JSON, over the limit of 1,000,000 bytes" in (job.message or "")


async def test_a_large_outcome_is_kept_while_every_statement_times_out(jm: JobMaster) -> None:
    """A lock, or a lost network: nothing is recorded for a while, the large outcome is not the
    cause and is recorded as it is once statements succeed again."""
    claims = await _claims(jm, 2)
    timeouts = 5

    async def record(outcomes: Sequence[tuple[Claim, Outcome]]) -> set[uuid.UUID]:
        nonlocal timeouts
        if timeouts:
            timeouts -= 1
            raise TimeoutError
        return await jm._worker.record(outcomes)

    recorder = Recorder(record, Outage(Events()))
    running = asyncio.create_task(recorder.run())
    try:
        big = json.dumps("x" * (SLOW_OUTCOME_BYTES + 1))
        recorder.add(claims[0], Outcome(ok=True, result=None, result_json=big))
        recorder.add(claims[1], Outcome(ok=True, result=None, result_json="1"))
        await within(recorder.events.wait_for(JobFinished, 2), "the outcomes to be recorded")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    job = await jm.get_job(claims[0].job_id)
    assert job is not None and job.status == "complete" and len(json.dumps(job.result)) == len(big)

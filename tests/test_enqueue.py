"""The typed enqueue, the library's own errors for Python mistakes, and how failures are logged."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jobmaster_async import InvalidArguments, InvalidJobId, JobMaster, TaskDefinitionError
from jobmaster_async.sync import JobMaster as BlockingJobMaster
from tests import tasks_for_tests
from tests.conftest import deployed


async def test_enqueue_takes_the_task_and_its_arguments(jm: JobMaster) -> None:
    first = await jm.enqueue(tasks_for_tests.add, a=1, b=2)
    assert await jm.enqueue(tasks_for_tests.add, 1, 2) == first  # positional: bound to names, same job
    urgent = await jm.options(priority=5).enqueue(tasks_for_tests.add, a=7)
    job = await jm.get_job(urgent)
    assert job is not None and (job.type_key, job.task_key, job.priority) == ("tasks_for_tests", "add", 5)
    assert job.arguments == {"a": 7, "b": 1}
    assert await jm.run() == 2
    done = await jm.get_job(first)
    assert done is not None and done.result == 3


async def test_enqueue_refuses_what_the_signature_does_not_take(jm: JobMaster) -> None:
    with pytest.raises(InvalidArguments, match=r"tasks_for_tests\.add: .*'c'"):
        await jm.enqueue(tasks_for_tests.add, a=1, c=3)  # type: ignore[call-arg]
    with pytest.raises(InvalidArguments, match=r"tasks_for_tests\.add: .*'a'"):
        await jm.enqueue(tasks_for_tests.add)  # type: ignore[call-arg]
    with pytest.raises(InvalidArguments, match="must be an integer"):  # checked in SQL, as any insert
        await jm.enqueue(tasks_for_tests.add, a="one")  # type: ignore[arg-type]

    def plain(a: int) -> None: ...

    with pytest.raises(TaskDefinitionError, match="not a task"):
        await jm.enqueue(plain, a=1)


def test_enqueue_in_the_blocking_facade(dsn: str, schema_name: str) -> None:
    with BlockingJobMaster(dsn, schema=schema_name) as jm:
        jm.deploy()
        job_id = jm.options(priority=3).enqueue(tasks_for_tests.add, a=2)
        assert jm.enqueue(tasks_for_tests.add, a=2) == job_id
        assert jm.run() == 1
        job = jm.get_job(job_id)
        assert job is not None and job.result == 3 and job.priority == 3


def test_a_type_checker_reports_wrong_arguments(tmp_path: Path) -> None:
    source = tmp_path / "queueing.py"
    source.write_text(
        textwrap.dedent("""
            from jobmaster_async import JobMaster
            from tests.tasks_for_tests import add

            async def queue(jm: JobMaster) -> None:
                await jm.enqueue(add, a=1, b=2)
                await jm.options(priority=5).enqueue(add, 1)
                await jm.enqueue(add, a="one")
                await jm.enqueue(add, b=2)
        """)
    )
    checked = subprocess.run(  # in a process of its own: mypy raises the recursion limit of its process
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(source),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        timeout=280,  # a cold mypy run (within the test's 300 s)
    )
    out, status = checked.stdout, checked.returncode
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert status == 1 and len(errors) == 2, out
    assert ':8: error: Argument "a" to "enqueue" of "JobMaster" has incompatible type "str"' in errors[0]
    assert ':9: error: Missing positional argument "a"' in errors[1]


async def test_python_mistakes_raise_the_librarys_errors(jm: JobMaster) -> None:
    with pytest.raises(InvalidArguments, match="priority must be an int"):
        await jm.insert_job("tasks_for_tests", "add", {"a": 1})  # type: ignore[arg-type]  # priority forgotten
    with pytest.raises(InvalidJobId, match="not a job id: 'nope'"):
        await jm.get_job("nope")


async def test_failures_are_logged_at_warning_while_retried_and_error_with_traceback_at_last(
    jm: JobMaster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobmaster_async")
    await jm.insert_job("tasks_for_tests", "flaky", 1, {"key": "logged"})
    assert await jm.run() == 3
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert [r.levelno for r in failures] == [logging.WARNING, logging.WARNING, logging.ERROR]
    assert "retry 1 of 2 in 0s" in failures[0].getMessage()
    assert "retry 2 of 2 in 0s" in failures[1].getMessage()
    assert "RuntimeError: flaky logged" in failures[2].getMessage()
    assert "Traceback (most recent call last)" in failures[2].getMessage()


async def test_a_requeued_job_starts_its_retries_and_backoff_afresh(
    dsn: str, schema_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobmaster_async")
    async with deployed(dsn, schema_name, retry_backoff=1.0) as jm:
        job_id = await jm.insert_job("tasks_for_tests", "flaky", 1, {"key": "afresh"})
        assert await jm.run() == 1  # attempt 1 fails; its retry waits a second
        assert await jm.cancel(job_id)
        await jm.retry(job_id)
        assert await jm.run() == 1  # attempt 2, the first of the requeued job's retries
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage() and "failed" in r.getMessage()]
    assert len(retries) == 2 and all("retry 1 of 2 in 1s" in message for message in retries), retries


async def test_enqueue_names_an_unknown_argument_and_what_was_meant(jm: JobMaster) -> None:
    with pytest.raises(InvalidArguments, match=r"tasks_for_tests\.add: unknown argument 'aa'; did you mean 'a'\?"):
        await jm.enqueue(tasks_for_tests.add, aa=1)  # type: ignore[call-arg]

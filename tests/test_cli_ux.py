"""The command as a newcomer meets it (issue 16): your own task module with --app, ids that can
be typed back, the live view of a worker, start-up errors in one line, tables for people and for
pipes, the examples' explanations, and consistent messages."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import types
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from jobmaster_async import JobMaster
from jobmaster_async.cli import main
from jobmaster_async.cli.context import database_location, run
from jobmaster_async.cli.rendering import cut, jobs_table
from jobmaster_async.cli.worker import OutcomeCounter, RecentRate
from jobmaster_async.errors import InvalidJobId
from jobmaster_async.events import Claimed, Completed, Events, Failed, Retried
from jobmaster_async.examples import nice_tasks
from jobmaster_async.ids import _dashed_suffix, digits_of, short_id
from jobmaster_async.jobs import Job
from jobmaster_async.tasks import check_definitions, definition_of
from tests.conftest import drop_schema

ROOT = Path(__file__).parent.parent


def insert(runner: CliRunner, base: list[str], task: str, arguments: dict[str, object]) -> str:
    result = runner.invoke(main, [*base, "insert", "tasks_for_tests", task, "--args", json.dumps(arguments)])
    assert result.exit_code == 0, result.output
    return result.output.strip()


def command(*args: str, cwd: Path, dsn: str | None = None) -> subprocess.CompletedProcess[str]:
    """``jobmaster-async ARGS`` as the installed script runs it: the current directory is not on
    sys.path by itself (``-P``), unlike with ``python -m``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if dsn:
        env["JOBMASTER_DSN"] = dsn
    return subprocess.run(
        [sys.executable, "-P", "-m", "jobmaster_async", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- 1. --app with your own module ---------------------------------------------------------------


def test_app_imports_a_module_of_the_current_directory(dsn: str, tmp_path: Path) -> None:
    (tmp_path / "billing.py").write_text(
        "from jobmaster_async import task\n\n\n@task\nasync def invoice(order_id: int) -> int:\n    return order_id\n"
    )
    schema = f"ux_{uuid.uuid4().hex[:8]}"
    try:
        done = command("--schema", schema, "deploy", "--app", "billing", cwd=tmp_path, dsn=dsn)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"deployed schema {schema}"
        inserted = command(
            "--schema", schema, "insert", "billing", "invoice", "--args", '{"order_id": 7}', cwd=tmp_path, dsn=dsn
        )
        assert inserted.returncode == 0 and uuid.UUID(inserted.stdout.strip())
        worked = command("--schema", schema, "worker", "--app", "billing", "--until-empty", cwd=tmp_path, dsn=dsn)
        assert worked.returncode == 0, worked.stderr
    finally:
        asyncio.run(drop_schema(dsn, schema))


def test_a_task_module_that_cannot_be_imported_is_one_line(dsn: str, tmp_path: Path) -> None:
    for args in (["deploy", "--app", "slwo"], ["worker", "--app", "slwo"]):
        done = command(*args, cwd=tmp_path, dsn=dsn)
        assert done.returncode == 1
        assert done.stderr.splitlines() == ["Error: cannot import task module 'slwo': No module named 'slwo'"]
    (tmp_path / "needs_more.py").write_text("import not_installed_anywhere\n")
    done = command("deploy", "--app", "needs_more", cwd=tmp_path, dsn=dsn)
    assert done.returncode == 1 and done.stderr.splitlines() == [
        "Error: cannot import task module 'needs_more': No module named 'not_installed_anywhere'"
    ]
    verbose = command("-v", "deploy", "--app", "slwo", cwd=tmp_path, dsn=dsn)
    assert "Traceback" in verbose.stderr and verbose.stderr.rstrip().endswith("No module named 'slwo'")


def test_uvloop_fallback_guards_only_its_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ImportError of the coroutine is its own: it is not run a second time on asyncio."""
    fake = types.ModuleType("uvloop")
    fake.run = asyncio.run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uvloop", fake)

    async def imports_a_missing_module() -> None:
        raise ModuleNotFoundError("No module named 'slwo'")

    with pytest.raises(ModuleNotFoundError, match="slwo"):
        run(imports_a_missing_module())


# -- 2. ids that can be typed back ---------------------------------------------------------------


def test_digits_of_what_people_type() -> None:
    job_id = uuid.UUID("01a22e93-5b6f-7c2e-9d4a-3f0e1b2c4d5e")
    assert short_id(job_id) == "3f0e1b2c4d5e"
    assert digits_of(" 01A22E93-5b6f ") == "01a22e935b6f"
    assert digits_of("…3f0e1b2c4d5e") == "3f0e1b2c4d5e"
    assert digits_of(str(job_id)) == job_id.hex
    for bad in ("nonsense", "", "-", "0" * 33, "12g4"):
        with pytest.raises(InvalidJobId):
            digits_of(bad)
    text = str(job_id)
    for n in range(1, 32):
        assert text.endswith(_dashed_suffix(job_id.hex[-n:])), n


def test_show_cancel_retry_take_any_unique_part_of_an_id(cli: tuple[CliRunner, list[str]]) -> None:
    runner, base = cli
    first = uuid.UUID(insert(runner, base, "add", {"a": 1}))
    second = uuid.UUID(insert(runner, base, "add", {"a": 2}))
    listing = runner.invoke(main, [*base, "jobs", "--json"])
    assert {json.loads(line)["job_id"] for line in listing.output.splitlines()} == {str(first), str(second)}

    # what a table shows: the last 12 hex digits, distinct although the jobs share a moment
    table = _render(jobs_table([_job(first), _job(second)], width=120), 120)
    assert short_id(first) in table and short_id(second) in table and short_id(first) != short_id(second)
    for part in (short_id(first), str(first)[-16:], first.hex[-7:], str(first), first.hex, str(first)[:24]):
        shown = runner.invoke(main, [*base, "show", part])
        assert shown.exit_code == 0, (part, shown.output)
        assert str(first) in shown.output and '"a": 1' in shown.output

    # time-ordered: the first digits are those of the moment, shared by both jobs
    common = first.hex[:4]
    assert second.hex.startswith(common)
    ambiguous = runner.invoke(main, [*base, "show", common])
    assert ambiguous.exit_code == 1
    assert f"job id '{common}' is ambiguous" in ambiguous.output
    assert (
        str(first) in ambiguous.output and str(second) in ambiguous.output and "tasks_for_tests.add" in ambiguous.output
    )

    cancelled = runner.invoke(main, [*base, "cancel", short_id(second)])
    assert cancelled.exit_code == 0 and cancelled.output.strip() == f"cancelled {second}"
    retried = runner.invoke(main, [*base, "retry", str(second)[-14:]])
    assert retried.exit_code == 0 and retried.output.strip() == f"queued again {second}"
    missing = runner.invoke(main, [*base, "show", "abcdefabcdef"])
    assert missing.exit_code == 1 and "no job id starts or ends with 'abcdefabcdef'" in missing.output
    not_an_id = runner.invoke(main, [*base, "cancel", "first"])
    assert not_an_id.exit_code == 2 and "not a job id" in not_an_id.output


# -- 3. worker --progress ------------------------------------------------------------------------


def test_rates_are_over_a_recent_window() -> None:
    rate = RecentRate(window=10.0)
    assert rate.per_second() == 0.0
    total = 0
    for second in range(4):  # a burst: 163 jobs a second for 3 seconds
        rate.add(float(second), total)
        total += 163
    assert rate.per_second() == pytest.approx(163.0)
    for second in range(4, 21):  # then idle for 17 s
        rate.add(float(second), 489)
    assert rate.per_second() == 0.0
    rate.add(21.0, 509)  # 20 more in the last second: 20 over the last 10 s
    assert rate.per_second() == pytest.approx(2.0, rel=0.11)


def test_outcome_counter_counts_per_task() -> None:
    events = Events()
    with OutcomeCounter().attached(events) as counter:
        events.emit(Completed(uuid.uuid4(), "t.a"))
        events.emit(Retried(uuid.uuid4(), "t.a", "ValueError"))
        events.emit(Failed(uuid.uuid4(), "t.b", "ValueError"))
        events.emit(Claimed(uuid.uuid4(), "t.a"))
    events.emit(Completed(uuid.uuid4(), "t.a"))  # detached: not counted
    assert counter.done == {"t.a": 1} and counter.retried == {"t.a": 1} and counter.failed == {"t.b": 1}


def test_progress_prints_logs_through_the_live_console(cli: tuple[CliRunner, list[str]]) -> None:
    runner, base = cli
    for a in range(3):
        insert(runner, base, "add", {"a": a})
    insert(runner, base, "explode", {"reason": "on purpose"})
    result = runner.invoke(main, [*base, "worker", "--app", "tests.tasks_for_tests", "--progress", "--until-empty"])
    assert result.exit_code == 0, result.output
    # the log lines went through rich's console (stdout), above the table, not to a stream of their own
    assert result.stdout.count("(tasks_for_tests.add) done in") == 3
    assert "exploded: on purpose" in result.stdout and "done in" not in result.stderr
    table = result.stdout.rsplit("concurrency 8", 1)[1]
    rows = {cells[1]: cells[2:-1] for line in table.splitlines() if len(cells := re.split(r"\s*[│┃]\s*", line)) == 9}
    header = ["waiting", "blocked", "running", "done", "failed", "finished/s"]
    assert rows["task"] == header
    assert rows["tasks_for_tests.add"][:5] == ["0", "0", "0", "3", "0"]
    assert rows["tasks_for_tests.explode"][:5] == ["0", "0", "0", "0", "1"]
    assert rows["all tasks"][:5] == ["0", "0", "0", "3", "1"]
    assert rows["tasks_for_tests.multiply"][:5] == ["0", "0", "0", "0", "0"]  # a task of this worker


# -- 4. start-up errors ---------------------------------------------------------------------------


def test_a_schema_never_deployed_is_one_line_for_every_command(dsn: str) -> None:
    runner = CliRunner()
    fresh = f"fresh_{uuid.uuid4().hex[:8]}"
    base = ["--dsn", dsn, "--schema", fresh]
    expected = f'Error: schema "{fresh}" is not deployed: run jobmaster-async --schema {fresh} deploy --app …'
    job_id = str(uuid.uuid4())
    for args in (
        ["jobs"],
        ["show", job_id],
        ["show", "abc123"],
        ["insert", "tasks_for_tests", "add", "--args", '{"a": 1}'],
        ["cancel", job_id],
        ["retry", job_id],
    ):
        result = runner.invoke(main, [*base, *args])
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.strip() == expected, args
    started = runner.invoke(main, [*base, "worker", "--app", "tests.tasks_for_tests"])
    assert started.exit_code == 1
    assert started.stderr.strip() == (
        f'Error: schema "{fresh}" is not deployed: run jobmaster-async --schema {fresh} deploy --app '
        "tests.tasks_for_tests, or start the worker with --deploy"
    )
    verbose = runner.invoke(main, [*base, "-v", "jobs"])
    assert verbose.exit_code == 1 and "Traceback" in verbose.stderr and "UndefinedTableError" in verbose.stderr


def test_a_worker_refused_at_start_ends_in_one_line() -> None:
    """A server that refuses connections is waited for (--wait-for-database, one line saying
    so), then one line naming the host, exit 1."""
    done = command(
        "--dsn", "postgresql://nobody@127.0.0.1:1/none", "worker", "--app", "tests.tasks_for_tests",
        "--wait-for-database", "1", cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 1
    waiting, error = done.stderr.strip().splitlines()
    assert (
        error == "Error: cannot reach a read-write database at 127.0.0.1:1 (waited 1s): [Errno 111] Connection refused"
    )
    assert "no read-write database server yet ([Errno 111] Connection refused); waiting up to 1s" in waiting
    assert "Traceback" not in done.stderr and "started" not in done.stderr


def test_an_outdated_schema_says_to_deploy(cli: tuple[CliRunner, list[str]], dsn: str) -> None:
    runner, base = cli
    schema = base[3]

    async def forget_last_migration() -> None:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            table = f'"{schema}".schema_version'
            await conn.execute(f"DELETE FROM {table} WHERE version = (SELECT max(version) FROM {table})")
        finally:
            await conn.close()

    asyncio.run(forget_last_migration())
    started = runner.invoke(main, [*base, "worker", "--app", "tests.tasks_for_tests"])
    assert (
        started.exit_code == 1 and "this jobmaster_async needs" in started.stderr and "to migrate it" in started.stderr
    )


def test_where_a_dsn_points() -> None:
    assert database_location("postgresql://u:secret@db.example:6543/x") == "db.example:6543"
    assert database_location("postgresql://u@db.example/x") == "db.example:5432"
    assert database_location("postgresql://u@[::1]:5433/x") == "::1:5433"
    assert database_location("postgresql://postgres@/postgres?host=/no/such/dir") == "/no/such/dir/.s.PGSQL.5432"
    assert database_location("postgresql://postgres@/postgres?host=/run/pg&port=5433") == "/run/pg/.s.PGSQL.5433"
    assert database_location("postgresql://u@db1,db2:5433/x?target_session_attrs=read-write") == "db1:5432, db2:5433"
    assert "secret" not in (database_location("postgresql://u:secret@h/x") or "")


def test_a_wrong_socket_folder_names_the_socket() -> None:
    result = CliRunner().invoke(main, ["--dsn", "postgresql://postgres@/postgres?host=/no/such/dir", "jobs"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: cannot reach the database at /no/such/dir/.s.PGSQL.5432: [Errno 2] No such file or directory"
    )


# -- 8. tables for people and pipes ---------------------------------------------------------------


def _job(job_id: uuid.UUID | None = None, message: str | None = None, **arguments: object) -> Job:
    return Job(
        job_id=job_id or uuid.uuid4(),
        type_key="tasks_for_tests",
        task_key="explode",
        priority=0,
        arguments=dict(arguments),
        status="failed",
        message=message,
    )


def _render(renderable: object, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


def test_cut_says_what_it_left_out() -> None:
    assert cut("short", 10) == "short"
    assert cut("x" * 20, 10) == "x" * 9 + "…"
    assert cut("first line\nsecond", 40) == "first line…"
    assert cut("日本語のテキスト", 7) == "日本語…"


@pytest.mark.parametrize("width", [80, 120, 200])
def test_tables_fit_the_terminal_and_cut_with_an_ellipsis(width: int) -> None:
    jobs = [_job(message="boom " * 100, reason="r" * 150), _job(message="a short one", reason="fine")]
    text = _render(jobs_table(jobs, width=width), width)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), text
    assert "…" in text and "a short one" in text
    for job in jobs:
        assert short_id(job.job_id) in text


def test_piped_jobs_are_tab_separated_and_never_cut(cli: tuple[CliRunner, list[str]]) -> None:
    runner, base = cli
    reason = "tab\there, newline\nhere, and long " + "x" * 400
    job_id = insert(runner, base, "explode", {"reason": reason})
    worked = runner.invoke(main, [*base, "worker", "--app", "tests.tasks_for_tests", "--until-empty"])
    assert worked.exit_code == 0
    listing = runner.invoke(main, ["jobs", *base])  # the settings after the command's name too
    assert listing.exit_code == 0, listing.output
    header, row = listing.stdout.splitlines()
    assert header.split("\t") == [
        "job_id", "task", "status", "priority", "created_at", "arguments", "result_or_message", "run_at",
    ]  # fmt: skip
    cells = row.split("\t")
    assert cells[:4] == [job_id, "tasks_for_tests.explode", "failed", "0"]
    assert cells[6] == "ValueError: exploded: tab\\there, newline\\nhere, and long " + "x" * 400
    assert "…" not in row
    as_json = runner.invoke(main, [*base, "jobs", "--json"])
    (line,) = as_json.stdout.splitlines()
    job = json.loads(line)
    assert job["job_id"] == job_id and job["arguments"] == {"reason": reason} and reason in job["message"]
    shown = runner.invoke(main, ["show", job_id[-12:], "--json", *base])
    (line,) = shown.stdout.splitlines()
    detail = json.loads(line)
    assert detail["status"] == "failed" and "ValueError" in detail["traceback"]
    assert [e["reason"] for e in detail["history"]] == ["inserted", "claimed", "failed"]


def test_piped_jobs_cut_only_huge_cells(cli: tuple[CliRunner, list[str]]) -> None:
    runner, base = cli
    huge = "y" * 50_000
    insert(runner, base, "echo", {"value": {"blob": huge}})
    listing = runner.invoke(main, ["jobs", *base])
    _, row = listing.stdout.splitlines()
    arguments = row.split("\t")[5]
    assert len(arguments) == 10_000 and arguments.endswith("…") and '"blob": "yyy' in arguments
    as_json = runner.invoke(main, [*base, "jobs", "--json"])
    assert json.loads(as_json.stdout)["arguments"]["value"] == {"blob": huge}


# -- 10. examples --------------------------------------------------------------------------------


def test_an_unknowable_argument_is_warned_about_at_each_check(caplog: pytest.LogCaptureFixture) -> None:
    """The examples' baz (on purpose) and a user's task alike: no module is a special case."""
    seed = [definition_of(nice_tasks.foo), definition_of(nice_tasks.bar), definition_of(nice_tasks.baz)]
    with caplog.at_level(logging.INFO, logger="jobmaster_async"):
        check_definitions(seed, {})
        check_definitions(seed, {})
    said = [r for r in caplog.records if "nice_tasks.baz" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.WARNING, logging.WARNING]
    assert "'number'" in said[0].getMessage() and "cannot be created when missing" in said[0].getMessage()


async def test_the_demo_leaves_no_folder_behind(dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobmaster_async.cli.demo import run_demo

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    schema = f"ux_demo_{uuid.uuid4().hex[:8]}"
    try:
        statuses = await run_demo(dsn, schema, Console(file=io.StringIO()))
    finally:
        await drop_schema(dsn, schema)
    assert sorted(statuses) == ["complete"] * 5 + ["failed"]
    assert os.listdir(tmp_path) == []


# -- 11. consistent messages ---------------------------------------------------------------------


def test_cancel_says_what_the_job_had_become(cli: tuple[CliRunner, list[str]]) -> None:
    runner, base = cli
    done = insert(runner, base, "add", {"a": 1})
    failed = insert(runner, base, "explode", {"reason": "x"})
    assert runner.invoke(main, [*base, "worker", "--app", "tests.tasks_for_tests", "--until-empty"]).exit_code == 0
    completed = runner.invoke(main, [*base, "cancel", done])
    assert completed.exit_code == 1 and completed.stderr.strip() == f"Error: job {done} had already completed"
    gone = runner.invoke(main, [*base, "cancel", failed])
    assert gone.exit_code == 1 and gone.stderr.strip() == f"Error: job {failed} had already failed"
    unknown = runner.invoke(main, [*base, "cancel", str(uuid.uuid4())])
    assert unknown.exit_code == 1 and "no job" in unknown.stderr


def test_retry_of_a_job_whose_twin_is_active_says_so(cli: tuple[CliRunner, list[str]], dsn: str) -> None:
    runner, base = cli
    first = insert(runner, base, "add", {"a": 5})
    assert runner.invoke(main, [*base, "cancel", first]).exit_code == 0
    twin = insert(runner, base, "add", {"a": 5})
    assert twin != first
    retried = runner.invoke(main, [*base, "retry", first])
    assert retried.exit_code == 0
    assert (
        retried.output.strip() == f"not queued again: the identical job {twin} is already waiting, blocked or running"
    )


def test_insert_suggests_the_task_meant(cli: tuple[CliRunner, list[str]]) -> None:
    runner, base = cli
    typo = runner.invoke(main, [*base, "insert", "tasks_for_tests", "ad", "--args", '{"a": 1}'])
    assert typo.exit_code == 1
    message = typo.stderr.strip()
    assert message.startswith("Error: unknown task tasks_for_tests.ad: did you mean add? tasks of tasks_for_tests: ")
    assert ", add, after_gate," in message and message.endswith("(66 in all)")
    wrong_type = runner.invoke(main, [*base, "insert", "task_for_tests", "add", "--args", '{"a": 1}'])
    assert wrong_type.exit_code == 1
    assert "no task of type task_for_tests is deployed; did you mean tasks_for_tests.add?" in wrong_type.stderr


async def test_an_empty_schema_says_to_deploy_tasks(dsn: str, schema_name: str) -> None:
    async with JobMaster(dsn, schema=schema_name) as jm:
        await jm.deploy()
        async with jm.connection() as conn:
            await conn.execute(f'DELETE FROM "{schema_name}".tasks')
    try:
        result = await asyncio.to_thread(
            CliRunner().invoke, main, ["--dsn", dsn, "--schema", schema_name, "insert", "a", "b"]
        )
        assert result.exit_code == 1 and "no task is deployed in schema" in result.stderr
    finally:
        await drop_schema(dsn, schema_name)

"""run_at is bounded at insert (SQL and Python: from 1970-01-01 to 9999-12-31 UTC, that day
excluded), and every listing survives a time Python's datetime cannot hold, planted past the
library: jm.jobs(), get_job(), history(), the CLI's jobs and show, the dashboard's pages and
/metrics show the row with the raw value."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner
from rich.console import Console

from jobmaster_async import JobMaster
from jobmaster_async.cli import main
from jobmaster_async.cli.rendering import jobs_table
from jobmaster_async.errors import InvalidArguments
from jobmaster_async.jobs import Job
from jobmaster_async.times import UndecodableTime, decode_timestamptz
from jobmaster_async.web import create_app
from tests.conftest import q
from tests.polling import until
from tests.test_client_transactions import web_role
from tests.test_web import _samples
from tests.web_support import client

T = "tasks_for_tests"

#: run_at values the SQL refuses, as a SQL client writes them
OUT_OF_RANGE = [
    "200000-01-01 00:00:00+00",
    "4000-01-01 00:00:00+00 BC",
    "infinity",
    "-infinity",
    "1969-12-31 23:59:59.999999+00",
    "9999-12-31 00:00:00+00",
]
#: the edges of the range, which it takes
IN_RANGE = ["1970-01-01 00:00:00+00", "9999-12-30 23:59:59.999999+00"]


async def job_count(conn: asyncpg.Connection, jm: JobMaster) -> int:
    count: int = await conn.fetchval(f"SELECT count(*) FROM {q(jm)}.jobs")
    return count


# -- refused at insert, in SQL -------------------------------------------------------------------


@pytest.mark.parametrize("run_at", OUT_OF_RANGE)
async def test_the_insert_only_role_cannot_insert_a_run_at_out_of_range(
    jm: JobMaster, dsn: str, conn: asyncpg.Connection, run_at: str
) -> None:
    statements = {
        "add_job": f"SELECT {q(jm)}.add_job('{T}', 'add', 1, '{{\"a\": 1}}', $1::text::timestamptz)",
        "CALL insert_job": f"CALL {q(jm)}.insert_job('{T}', 'add', 1, '{{\"a\": 1}}'::json,"
        " run_at => $1::text::timestamptz)",
    }
    async with web_role(jm, dsn, conn) as web:
        await web.execute("SET TimeZone = 'UTC'")  # the time in the message as given
        for how, statement in statements.items():
            with pytest.raises(asyncpg.PostgresError) as refused:
                await web.execute(statement, run_at)
            error: Any = refused.value
            assert error.sqlstate == "JM400" and error.detail == "invalid_run_at", how
            assert error.message.startswith(f"{T}.add: run_at must be from 1970-01-01 to 9999-12-31 UTC"), how
            assert error.message.endswith(f"got {run_at}"), how  # the session's TimeZone is UTC
    # the bulk insert (the owner's), a dependent task's path and "ALL" too
    bulk = f"SELECT {q(jm)}.insert_jobs('{T}', $2, 0, ARRAY[$3::jsonb], $1::text::timestamptz)"
    for task_key, arguments in (("add", {"a": 1}), ("doubled", {"n": 1}), ("painted_in_every_colour", {"item": "x"})):
        with pytest.raises(asyncpg.PostgresError) as refused:
            await conn.execute(bulk, run_at, task_key, json.dumps(arguments))
        assert refused.value.sqlstate == "JM400" and f"{T}.{task_key}: run_at" in str(refused.value)
    assert await job_count(conn, jm) == 0
    assert await jm.run() == 0  # the BC job does not run at once: there is none


async def test_the_edges_of_the_range_and_null_are_taken(jm: JobMaster, dsn: str, conn: asyncpg.Connection) -> None:
    async with web_role(jm, dsn, conn) as web:
        for n, run_at in enumerate([*IN_RANGE, None]):
            job_id = await web.fetchval(
                f"SELECT {q(jm)}.add_job('{T}', 'add', 1, $1::json, $2::text::timestamptz)",
                json.dumps({"a": n}),
                run_at,
            )
            stored = await conn.fetchval(f"SELECT run_at::text FROM {q(jm)}.jobs WHERE job_id = $1", job_id)
            assert stored == run_at
    job = await jm.get_job(job_id)
    assert job is not None and job.run_at is None
    # the last one is the upper edge: it reads as a plain datetime
    [latest] = [j for j in await jm.jobs() if j.arguments == {"a": 1, "b": 1}]
    assert type(latest.run_at) is datetime and latest.run_at == datetime(9999, 12, 30, 23, 59, 59, 999999, UTC)


# -- refused at insert, in Python ----------------------------------------------------------------


async def test_python_refuses_the_same_range_before_sending(jm: JobMaster, conn: asyncpg.Connection) -> None:
    refused: list[datetime | timedelta] = [
        datetime(1969, 12, 31, 23, 59, 59, 999999, UTC),
        datetime(9999, 12, 31, tzinfo=UTC),
        datetime.max.replace(tzinfo=UTC),
        datetime.min.replace(tzinfo=UTC),
        timedelta(days=-30_000),  # 82 years ago: before 1970
        timedelta(days=3_000_000),  # past the year 9999
        timedelta.max,  # beyond what a datetime can add
    ]
    for run_at in refused:
        for insert in (
            jm.insert_job(T, "add", 0, {"a": 1}, run_at=run_at),
            jm.insert_jobs(T, "add", 0, [{"a": 1}], run_at=run_at),
        ):
            with pytest.raises(InvalidArguments) as error:
                await insert
            message = str(error.value)
            assert message.startswith(f"{T}.add: run_at must be from 1970-01-01 to 9999-12-31 UTC"), message
            assert error.value.__cause__ is None  # refused here, not by the database
        with pytest.raises(InvalidArguments):
            jm.options(run_at=run_at)
    assert await job_count(conn, jm) == 0
    # the edges are taken
    for n, at in enumerate((datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 12, 30, 23, 59, tzinfo=UTC))):
        job = await jm.get_job(await jm.insert_job(T, "add", 0, {"a": n}, run_at=at))
        assert job is not None and job.run_at == at


async def test_the_fast_insert_statement_inserts_nothing_out_of_range(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """The library's one-statement insert: out of range, it leaves the job to insert_job, which
    refuses it (a caller of the store past arguments.when is refused all the same)."""
    far = datetime(9999, 12, 31, 12, tzinfo=UTC)
    assert await jm._store.insert_job_fast(T, "add", 0, '{"a": 1}', far) is None
    assert await jm._store.insert_job_fast(T, "add", 0, '{"a": 1}', None, timedelta(days=-30_000)) is None
    with pytest.raises(asyncpg.PostgresError) as refused:
        await jm._store.insert_job(T, "add", 0, '{"a": 1}', far)
    assert refused.value.sqlstate == "JM400"
    assert await job_count(conn, jm) == 0
    assert await jm._store.insert_job_fast(T, "add", 0, '{"a": 1}', datetime(2030, 1, 1, tzinfo=UTC)) is not None


def test_the_command_refuses_it(dsn: str, schema_name: str) -> None:
    runner = CliRunner()
    base = ["--dsn", dsn, "--schema", schema_name]
    assert runner.invoke(main, [*base, "deploy", "--app", "tests.tasks_for_tests"]).exit_code == 0
    try:
        result = runner.invoke(main, [*base, "insert", T, "add", "--args", '{"a": 1}', "--run-at", "1960-01-01T00:00Z"])
        assert result.exit_code == 1 and "run_at must be from 1970-01-01" in result.output, result.output
    finally:
        runner.invoke(main, [*base, "deploy", "--reset"], input="y\n")


# -- rows already in the database ----------------------------------------------------------------


async def plant(jm: JobMaster, conn: asyncpg.Connection) -> dict[str, uuid.UUID]:
    """Jobs whose times a datetime cannot hold, written past the library (as before the bound):
    far: run_at in the year 200000 (waiting, scheduled); bc: run_at 4000 BC (waiting, due);
    odd: a complete job created at infinity, started 4000 BC, finished in 200000, with a history
    event at -infinity."""
    ids = {
        "far": await jm.insert_job(T, "add", 0, {"a": 1}),
        "bc": await jm.insert_job(T, "add", 0, {"a": 2}),
        "odd": await jm.insert_job(T, "add", 0, {"a": 3}),
    }
    jobs = f"{q(jm)}.jobs"
    await conn.execute(
        f"UPDATE {jobs} SET run_at = '200000-01-01 00:00+00', run_after = '200000-01-01 00:00+00', scheduled = true"
        " WHERE job_id = $1",
        ids["far"],
    )
    await conn.execute(f"UPDATE {jobs} SET run_at = '4000-01-01 00:00+00 BC' WHERE job_id = $1", ids["bc"])
    await conn.execute(
        f"UPDATE {jobs} SET status = 'complete', result = '4', attempts = 1, created_at = 'infinity',"
        " started_at = '4000-01-01 00:00+00 BC', finished_at = '200000-01-01 00:00+00' WHERE job_id = $1",
        ids["odd"],
    )
    await conn.execute(
        f"INSERT INTO {q(jm)}.job_events (job_id, status, reason, at)"
        " VALUES ($1, 'complete', 'completed', '-infinity')",
        ids["odd"],
    )
    return ids


FAR, BC = "200000-01-01 00:00:00+00", "4000-01-01 00:00:00+00 BC"


async def test_jobs_get_job_and_history_show_the_raw_values(jm: JobMaster, conn: asyncpg.Connection) -> None:
    ids = await plant(jm, conn)
    listed = {job.job_id: job for job in await jm.jobs()}
    assert set(ids.values()) <= set(listed)
    for source in (listed, {i: await jm.get_job(i) for i in ids.values()}):
        far, bc, odd = (source[ids[name]] for name in ("far", "bc", "odd"))
        assert far is not None and bc is not None and odd is not None
        assert isinstance(far.run_at, UndecodableTime) and str(far.run_at) == FAR
        assert far.run_after is not None and far.run_after.isoformat() == FAR
        assert isinstance(bc.run_at, UndecodableTime) and bc.run_at.isoformat() == BC
        assert repr(odd.created_at) == "infinity" and str(odd.started_at) == BC and str(odd.finished_at) == FAR
        # as datetimes, the nearest ones a datetime holds: they compare with ordinary times
        now = datetime.now(UTC)
        assert far.run_at > now and bc.run_at < now and odd.created_at is not None and odd.created_at > now
        assert type(far.created_at) is datetime  # ordinary times are as ever
    history = await jm.history(ids["odd"])
    assert [str(e["at"]) for e in history if str(e["at"]) == "-infinity"] == ["-infinity"]
    # sent back as a parameter, such a value is the one it was read from
    far_run_at = listed[ids["far"]].run_at
    async with jm.connection() as c:
        assert await c.fetchval(f"SELECT count(*) FROM {q(jm)}.jobs WHERE run_at = $1", far_run_at) == 1


async def test_the_raw_value_is_what_postgresql_writes(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """Across PostgreSQL's whole range (4713 BC to 294276 AD), in steps that land on every part
    of the calendar: a time a datetime holds decodes as asyncpg's own decoder does; any other's
    text is PostgreSQL's, in UTC."""
    values = (
        "SELECT t, t::text AS text FROM (SELECT '4713-01-01 00:00:00+00 BC'::timestamptz"
        " + i * interval '7919 days 3 hours 5 minutes 7.123457 seconds' AS t FROM generate_series(0, 13400) AS i"
        ' UNION ALL SELECT unnest(\'{infinity,-infinity,0001-01-01 00:00:00+00,"0001-01-01 00:00:00+00 BC",'
        "9999-12-31 23:59:59.999999+00,294276-12-31 23:59:59.999999+00}'::timestamptz[])) AS s"
    )
    async with jm.connection() as ours:
        await ours.execute("SET TimeZone = 'UTC'")
        rows = await ours.fetch(values)
    raw = [(row["t"], row["text"]) for row in rows if isinstance(row["t"], UndecodableTime)]
    assert len(raw) > 9000  # most of the range is beyond the year 9999
    assert {"infinity", "-infinity", "0001-01-01 00:00:00+00 BC", "294276-12-31 23:59:59.999999+00"} <= {
        t for _, t in raw
    }
    for value, text in raw:
        assert value.raw == text
    # what a datetime holds (with a day to spare): as asyncpg's decoder gives it
    plain = [row["t"] for row in rows if not isinstance(row["t"], UndecodableTime)]
    theirs = await conn.fetch(
        f"SELECT t FROM ({values}) AS v WHERE t >= '0001-01-02 00:00+00' AND t < '9999-12-31 00:00+00'"
    )
    assert len(plain) > 300 and plain == [row["t"] for row in theirs]
    assert all(type(t) is datetime and t.tzinfo is UTC for t in plain)


def test_the_terminal_table_shows_them() -> None:
    """``jobs`` on a terminal: a waiting job's future run_at after its status, raw."""
    far = decode_timestamptz((10**19 // 2,))
    job = Job(uuid.uuid4(), T, "add", 0, {"a": 1}, "waiting", run_at=far, created_at=decode_timestamptz((2**63 - 1,)))
    console = Console(record=True, width=200)
    console.print(jobs_table([job]))
    assert isinstance(far, UndecodableTime) and far.raw == "160443-09-10 08:53:20+00"
    assert f"waiting until {far.raw}" in console.export_text()


def _cli(dsn: str, jm: JobMaster, *arguments: str) -> Any:
    return CliRunner().invoke(main, ["--dsn", dsn, "--schema", jm.schema, *arguments])


async def test_the_command_lists_and_shows_them(jm: JobMaster, conn: asyncpg.Connection, dsn: str) -> None:
    ids = await plant(jm, conn)
    # the command runs its own event loop: in a thread
    listing = await asyncio.to_thread(_cli, dsn, jm, "jobs")
    assert listing.exit_code == 0, listing.output
    rows = {line.split("\t")[0]: line.split("\t") for line in listing.output.splitlines()[1:]}
    assert rows[str(ids["far"])][-1] == FAR and rows[str(ids["bc"])][-1] == BC
    assert rows[str(ids["odd"])][4] == "infinity"  # created_at
    as_json = await asyncio.to_thread(_cli, dsn, jm, "jobs", "--json")
    assert as_json.exit_code == 0, as_json.output
    by_id = {job["job_id"]: job for job in map(json.loads, as_json.output.splitlines())}
    assert by_id[str(ids["far"])]["run_at"] == FAR and by_id[str(ids["odd"])]["started_at"] == BC
    shown = await asyncio.to_thread(_cli, dsn, jm, "show", str(ids["far"]))
    assert shown.exit_code == 0 and f"run at: {FAR}" in shown.output, shown.output
    shown = await asyncio.to_thread(_cli, dsn, jm, "show", str(ids["odd"]))
    assert shown.exit_code == 0, shown.output
    assert "created: infinity" in shown.output and f"started: {BC}" in shown.output
    assert f"finished: {FAR}" in shown.output and "-infinity" in shown.output  # the history's event
    shown = await asyncio.to_thread(_cli, dsn, jm, "show", str(ids["odd"]), "--json")
    assert shown.exit_code == 0 and json.loads(shown.output)["created_at"] == "infinity", shown.output


async def test_the_dashboard_lists_shows_and_counts_them(jm: JobMaster, conn: asyncpg.Connection) -> None:
    ids = await plant(jm, conn)
    dash = create_app(jm, secret="a secret for the tests")
    dash.metrics.lag = timedelta(0)
    try:
        async with client(dash) as http:
            assert (await http.get("/metrics")).status_code == 200  # the first scrape starts the window
            assert (await http.get("/")).status_code == 200
            for query in ("", "?status=waiting", "?status=complete", "?q=tasks_for_tests"):
                listing = await http.get(f"/jobs{query}")
                assert listing.status_code == 200, query
            listing = await http.get("/jobs")
            assert all(str(job_id) in listing.text for job_id in ids.values())
            assert 'title="infinity"' in listing.text  # the created time of "odd", raw
            far = await http.get(f"/jobs/{ids['far']}")
            assert far.status_code == 200 and f'data-ts="" data-fmt="dt">{FAR}</time>' in far.text
            odd = await http.get(f"/jobs/{ids['odd']}")
            assert odd.status_code == 200 and BC in odd.text and FAR in odd.text and "infinity" in odd.text
            bc = await http.get(f"/jobs/{ids['bc']}")
            assert bc.status_code == 200 and BC in bc.text
            # the due one runs (claimed, completed): its history is in the next scrape's window
            assert await jm.run() == 1
            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            samples = _samples(metrics.text)
            add = {("type_key", T), ("task_key", "add")}
            assert samples[("jobmaster_jobs", frozenset({*add, ("status", "waiting")}))] == 1  # far
            assert samples[("jobmaster_job_outcomes_total", frozenset({*add, ("outcome", "completed")}))] == 1
    finally:
        await dash.aclose()
    done = await jm.get_job(ids["bc"])
    assert done is not None and done.status == "complete" and str(done.run_at) == BC


@pytest.mark.parametrize("when", ["infinity", "-infinity", "200000-01-01 00:00+00"])
async def test_a_worker_lives_beside_a_stored_run_at_out_of_range(
    jm: JobMaster, conn: asyncpg.Connection, when: str
) -> None:
    """A waiting job whose run_at was stored before the bound (timestamp subtraction refuses
    infinity before PostgreSQL 17): the claim's and the idle wait's "when is the next job due"
    still answer, and the worker runs the other jobs."""
    planted = await jm.insert_job("tasks_for_tests", "add", 0, {"a": 1}, run_at=timedelta(hours=1))
    await conn.execute(
        f"UPDATE {q(jm)}.jobs SET run_at = $2::text::timestamptz, run_after = $2::text::timestamptz WHERE job_id = $1",
        planted,
        when,
    )
    task = asyncio.create_task(jm.run_forever(2, handle_signals=False))
    try:
        job_id = await jm.insert_job("tasks_for_tests", "add", 0, {"a": 2})

        async def ended() -> bool:
            job = await jm.get_job(job_id)
            return task.done() or (job is not None and job.status == "complete")

        await until(ended, "the other job to complete (or the worker to end)")
        assert not task.done(), task.exception()
        job = await jm.get_job(job_id)
        assert job is not None and job.status == "complete"
    finally:
        await jm.stop()
        await asyncio.wait_for(task, 30)

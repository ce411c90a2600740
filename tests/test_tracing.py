"""OpenTelemetry traces (DESIGN 9.1 "Traces", README "Tracing"): the inserting span's W3C context
is stored with the job (NULL without one) and each attempt is a child span of it, for async tasks,
sync tasks in threads, run_forever and pop_job; created dependencies and "ALL" children inherit
it, a dedupe twin keeps its own; SQL clients pass one through settings, a malformed one is not
stored and breaks nothing; without opentelemetry, inserting and running work and nothing imports
it.

A global TracerProvider can be set only once per process: the session sets it once (fixture
``provider``), with an in-memory exporter that keeps spans only while a test of this module asks
for them (fixture ``spans``), so the jobs of other tests do not pile up in memory."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import asyncpg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer

from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier
from jobmaster_async.sync import JobMaster as SyncJobMaster
from tests.conftest import drop_schema, worker
from tests.polling import until

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7
MALFORMED = [
    "garbage",
    "",
    TRACEPARENT.upper(),  # hex digits are lowercase
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # trace id all zero
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # span id all zero
    "ff" + TRACEPARENT[2:],  # version ff is invalid
    TRACEPARENT + "-00",  # more fields than version 00 has
    " " + TRACEPARENT,
    TRACEPARENT + "\n",
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # a digit short
    "x" * 10_000,
    "'); DROP TABLE jobs; --",
]


class SwitchedExporter(InMemorySpanExporter):
    """The SDK's in-memory exporter, keeping spans only while ``recording``."""

    recording = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return super().export(spans) if self.recording else SpanExportResult.SUCCESS


_EXPORTER = SwitchedExporter()


@pytest.fixture(scope="session")
def provider() -> TracerProvider:
    """The process's TracerProvider, set once (OpenTelemetry refuses a second one)."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):  # set already (by a plugin, say): report to it too
        current.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        return current
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)
    return provider


@pytest.fixture
def spans(provider: TracerProvider) -> Iterator[SwitchedExporter]:
    """The spans finished during the test."""
    _EXPORTER.clear()
    _EXPORTER.recording = True
    try:
        yield _EXPORTER
    finally:
        _EXPORTER.recording = False
        _EXPORTER.clear()


@pytest.fixture
def tracer(provider: TracerProvider) -> Tracer:
    return provider.get_tracer("tests.test_tracing")


def runs_of(exporter: InMemorySpanExporter, job_id: uuid.UUID) -> list[ReadableSpan]:
    """The spans of a job's attempts, in order."""
    found = [s for s in exporter.get_finished_spans() if (s.attributes or {}).get("jobmaster.job_id") == str(job_id)]
    return sorted(found, key=lambda s: s.start_time or 0)


def traceparent_of(span: Span | ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def assert_child_of(run: ReadableSpan, parent: Span | ReadableSpan) -> None:
    """``run`` is a child of ``parent``: the same trace, its parent span."""
    expected = parent.get_span_context()
    assert expected is not None and run.context is not None and run.parent is not None
    assert run.context.trace_id == expected.trace_id
    assert run.parent.span_id == expected.span_id


async def stored_context(jm: JobMaster, job_id: uuid.UUID) -> dict[str, str] | None:
    job = await jm.get_job(job_id)
    assert job is not None
    return job.trace_context


async def complete(jm: JobMaster, job_id: uuid.UUID) -> bool:
    job = await jm.get_job(job_id)
    return job is not None and job.status == "complete"


def q(jm: JobMaster) -> str:
    return quote_identifier(jm.schema)


# -- inserting in a span, running in a child span --------------------------------------------


@pytest.mark.parametrize("task_key", ["add", "multiply"])
@pytest.mark.parametrize("way", ["run_forever", "pop_job"])
async def test_a_job_runs_in_a_child_span_of_its_inserter(
    jm: JobMaster, spans: SwitchedExporter, tracer: Tracer, task_key: str, way: str
) -> None:
    """An async task inline and a sync task in a thread; by the dispatcher and by pop_job()."""
    arguments = {"a": 1} if task_key == "add" else {"x": 2, "y": 3}
    with tracer.start_as_current_span("request") as request:
        job_id = await jm.insert_job("tasks_for_tests", task_key, 0, arguments)
    assert await stored_context(jm, job_id) == {"traceparent": traceparent_of(request)}
    if way == "pop_job":
        job = await jm.pop_job()
        assert job is not None and job.trace_context == {"traceparent": traceparent_of(request)}
        await job.execute()
        assert job.status == "complete"
    else:
        async with worker(jm):
            await until(lambda: complete(jm, job_id), "the job to complete")
    [run] = runs_of(spans, job_id)
    assert run.name == f"jobmaster.run tasks_for_tests.{task_key}"
    assert run.kind == SpanKind.CONSUMER
    assert_child_of(run, request)
    assert run.attributes == {
        "messaging.system": "jobmaster",
        "messaging.operation.type": "process",
        "jobmaster.task": f"tasks_for_tests.{task_key}",
        "jobmaster.job_id": str(job_id),
        "jobmaster.attempt": 1,
        "jobmaster.outcome": "completed",
    }
    assert run.status.status_code == StatusCode.UNSET and not run.events
    # the inserting span and the job's: one trace
    [inserting] = [s for s in spans.get_finished_spans() if s.name == "request"]
    assert inserting.context is not None and run.context is not None
    assert inserting.context.trace_id == run.context.trace_id


@pytest.mark.parametrize("task_key", ["context_async", "context_in_thread"])
@pytest.mark.parametrize("way", ["run_forever", "run"])
async def test_the_span_is_current_while_the_task_runs(
    jm: JobMaster, spans: SwitchedExporter, tracer: Tracer, task_key: str, way: str
) -> None:
    """What the task's code sees (a job it inserts would be stored with it): the run's span, in
    the event loop and in the task's thread."""
    with tracer.start_as_current_span("request"):
        job_id = await jm.insert_job("tasks_for_tests", task_key, 0, {"key": way})
    if way == "run":
        assert await jm.run() == 1
    else:
        async with worker(jm):
            await until(lambda: complete(jm, job_id), "the job to complete")
    [run] = runs_of(spans, job_id)
    job = await jm.get_job(job_id)
    assert job is not None and job.result == [traceparent_of(run), None]


async def test_a_failed_attempt_is_an_error_with_its_exception(
    jm: JobMaster, spans: SwitchedExporter, tracer: Tracer
) -> None:
    with tracer.start_as_current_span("request") as request:
        job_id = await jm.insert_job("tasks_for_tests", "explode", 0, {"reason": "why"})
    assert await jm.run() == 1
    [run] = runs_of(spans, job_id)
    assert_child_of(run, request)
    assert run.attributes is not None and run.attributes["jobmaster.outcome"] == "failed"
    assert run.status.status_code == StatusCode.ERROR
    assert run.status.description == "ValueError: exploded: why"
    [event] = run.events
    assert event.name == "exception" and event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "exploded: why"
    assert "raise ValueError" in str(event.attributes["exception.stacktrace"])


async def test_every_attempt_is_a_span_of_the_same_trace(
    jm: JobMaster, spans: SwitchedExporter, tracer: Tracer
) -> None:
    """retries=2: two attempts retried, the third failed for good; then retry(id), from no span,
    runs it again (three more attempts) as a child of its inserter."""
    with tracer.start_as_current_span("request") as request:
        job_id = await jm.insert_job("tasks_for_tests", "flaky", 0, {"key": "k"})
    assert await jm.run() == 3
    runs = runs_of(spans, job_id)
    assert [(r.attributes or {}).get("jobmaster.attempt") for r in runs] == [1, 2, 3]
    assert [(r.attributes or {}).get("jobmaster.outcome") for r in runs] == ["retried", "retried", "failed"]
    assert all(r.status.status_code == StatusCode.ERROR for r in runs)
    for run in runs:
        assert_child_of(run, request)
    await jm.retry(job_id)
    assert await jm.run() == 3  # its retries afresh
    again = runs_of(spans, job_id)[3:]
    assert [(r.attributes or {}).get("jobmaster.attempt") for r in again] == [4, 5, 6]
    for run in again:
        assert_child_of(run, request)


async def test_a_job_cancelled_while_it_runs_ends_its_span(
    jm: JobMaster, spans: SwitchedExporter, tracer: Tracer
) -> None:
    with tracer.start_as_current_span("request") as request:
        job_id = await jm.insert_job("tasks_for_tests", "sleepy", 0, {"seconds": 30})
    async with worker(jm):
        await until(lambda: running(jm, job_id), "the job to start")
        assert await jm.cancel(job_id)
        await until(lambda: ended(spans, job_id), "its span to end")
    [run] = runs_of(spans, job_id)
    assert_child_of(run, request)
    assert (run.attributes or {}).get("jobmaster.outcome") == "cancelled"


async def ended(exporter: InMemorySpanExporter, job_id: uuid.UUID) -> bool:
    return bool(runs_of(exporter, job_id))


async def running(jm: JobMaster, job_id: uuid.UUID) -> bool:
    job = await jm.get_job(job_id)
    return job is not None and job.status == "running"


async def test_insert_jobs_and_enqueue_store_the_context(
    jm: JobMaster, spans: SwitchedExporter, tracer: Tracer
) -> None:
    from tests.tasks_for_tests import add

    with tracer.start_as_current_span("request") as request:
        ids = await jm.insert_jobs("tasks_for_tests", "add", 0, [{"a": 10}, {"a": 11}])
        ids.append(await jm.enqueue(add, 12))
        ids.append(await jm.options(priority=3).enqueue(add, 13))
    for job_id in ids:
        assert await stored_context(jm, job_id) == {"traceparent": traceparent_of(request)}
    assert await jm.run() == 4
    for job_id in ids:
        [run] = runs_of(spans, job_id)
        assert_child_of(run, request)


async def test_the_blocking_facade_stores_its_caller_s_context(
    dsn: str, jm: JobMaster, spans: SwitchedExporter, tracer: Tracer
) -> None:
    """Its calls run on an event loop in another thread, with the caller's context."""

    def insert() -> tuple[uuid.UUID, str]:
        blocking = SyncJobMaster(dsn, schema=jm.schema)
        try:
            with tracer.start_as_current_span("script") as script:
                return blocking.insert_job("tasks_for_tests", "add", 0, {"a": 20}), traceparent_of(script)
        finally:
            blocking.close()

    job_id, traceparent = await asyncio.to_thread(insert)
    assert await stored_context(jm, job_id) == {"traceparent": traceparent}


async def test_without_a_span_nothing_is_stored(jm: JobMaster, spans: SwitchedExporter) -> None:
    """And the job's span is a root of a trace of its own (nothing current where it runs)."""
    job_id = await jm.insert_job("tasks_for_tests", "add", 0, {"a": 30})
    [other] = await jm.insert_jobs("tasks_for_tests", "add", 0, [{"a": 31}])
    assert await stored_context(jm, job_id) is None and await stored_context(jm, other) is None
    assert await jm.run() == 2
    [run] = runs_of(spans, job_id)
    assert run.parent is None


async def test_the_tracestate_is_stored_with_it(jm: JobMaster, spans: SwitchedExporter, tracer: Tracer) -> None:
    """A remote parent (as an incoming request carries it) with a tracestate: both stored, and
    the job's span is the remote span's child."""
    parent = trace.NonRecordingSpan(
        trace.SpanContext(
            TRACE_ID, SPAN_ID, is_remote=True, trace_flags=trace.TraceFlags(1),
            trace_state=trace.TraceState([("vendor", "a1"), ("other", "b2")]),
        )
    )  # fmt: skip
    with trace.use_span(parent):
        job_id = await jm.insert_job("tasks_for_tests", "add", 0, {"a": 40})
    assert await stored_context(jm, job_id) == {"traceparent": TRACEPARENT, "tracestate": "vendor=a1,other=b2"}
    assert await jm.run() == 1
    [run] = runs_of(spans, job_id)
    assert_child_of(run, parent)
    assert run.context is not None and run.context.trace_state.to_header() == "vendor=a1,other=b2"


# -- created jobs inherit, twins keep their own -------------------------------------------------


async def test_created_dependencies_and_all_children_inherit_the_context(
    jm: JobMaster, spans: SwitchedExporter, tracer: Tracer
) -> None:
    """painted_in_every_colour depends on paint(colour="ALL"): its dependency (an "ALL" parent)
    and that parent's children are created with the dependent's context; fan creates
    shared_setup; paint(..., "ALL") directly fans out."""
    with tracer.start_as_current_span("request") as request:
        dependent = await jm.insert_job("tasks_for_tests", "painted_in_every_colour", 0, {"item": "chair"})
        fan = await jm.insert_job("tasks_for_tests", "fan", 0, {"i": 1, "key": "k"})
        parent = await jm.insert_job("tasks_for_tests", "paint", 0, {"item": "table", "colour": "ALL", "size": "ALL"})
    expected = {"traceparent": traceparent_of(request)}
    rows = await (await jm._store.pool()).fetch(
        f"SELECT t.task_key, j.arguments, j.trace_context FROM {q(jm)}.jobs AS j "
        f"JOIN {q(jm)}.tasks AS t USING (task_id)"
    )
    # the dependent, paint's ALL parent and its 2 children, fan, shared_setup, paint's parent and 6 children
    assert len(rows) == 1 + 1 + 2 + 2 + 1 + 6
    assert all(row["trace_context"] == expected for row in rows), rows
    assert await jm.run() == len(rows) - 2  # "ALL" parents are never claimed
    for job_id in (dependent, fan):
        [run] = runs_of(spans, job_id)
        assert_child_of(run, request)
    assert not runs_of(spans, parent)
    runs = [s for s in spans.get_finished_spans() if s.name.startswith("jobmaster.run ")]
    assert len(runs) == len(rows) - 2
    for run in runs:
        assert_child_of(run, request)


async def test_a_dedupe_twin_keeps_its_own_context(jm: JobMaster, tracer: Tracer, spans: SwitchedExporter) -> None:
    """Also a pending dependency: the new dependent links to it and leaves it as it was."""
    with tracer.start_as_current_span("first") as first:
        job_id = await jm.insert_job("tasks_for_tests", "add", 0, {"a": 50})
        setup = await jm.insert_job("tasks_for_tests", "shared_setup", 0, {"key": "twin"})
    with tracer.start_as_current_span("second") as second:
        assert await jm.insert_job("tasks_for_tests", "add", 0, {"a": 50}) == job_id
        assert await jm.insert_jobs("tasks_for_tests", "add", 0, [{"a": 50}]) == [job_id]
        dependent = await jm.insert_job("tasks_for_tests", "fan", 0, {"i": 2, "key": "twin"})
    assert await stored_context(jm, job_id) == {"traceparent": traceparent_of(first)}
    assert await stored_context(jm, setup) == {"traceparent": traceparent_of(first)}
    assert await stored_context(jm, dependent) == {"traceparent": traceparent_of(second)}
    assert await jm.dependencies(dependent) == [
        {"job_id": setup, "type_key": "tasks_for_tests", "task_key": "shared_setup", "status": "waiting"}
    ]
    # without a span, a twin keeps its context too
    assert await jm.insert_job("tasks_for_tests", "add", 0, {"a": 50}) == job_id
    assert await stored_context(jm, job_id) == {"traceparent": traceparent_of(first)}


# -- SQL clients ----------------------------------------------------------------------------


async def sql_inserts(jm: JobMaster, conn: asyncpg.Connection, key: int) -> list[uuid.UUID]:
    """A job through each entry point of the SQL interface: add_job, CALL insert_job, insert_jobs."""
    add = await conn.fetchval(f"SELECT {q(jm)}.add_job('tasks_for_tests', 'add', 0, $1::json)", json.dumps({"a": key}))
    called = await conn.fetchval(
        f"CALL {q(jm)}.insert_job('tasks_for_tests', 'add', 0, $1::json)", json.dumps({"a": key + 1})
    )
    [bulk] = await conn.fetchval(
        f"SELECT {q(jm)}.insert_jobs('tasks_for_tests', 'add', 0, ARRAY[$1::jsonb])", json.dumps({"a": key + 2})
    )
    return [add, called, bulk]


async def test_sql_clients_pass_a_context_through_settings(
    jm: JobMaster, conn: asyncpg.Connection, spans: SwitchedExporter
) -> None:
    """jobmaster.traceparent and jobmaster.tracestate, set for the transaction: its inserts store
    them, and the jobs run as children of that remote span; later transactions store nothing."""
    async with conn.transaction():
        await conn.execute(
            "SELECT set_config('jobmaster.traceparent', $1, true), set_config('jobmaster.tracestate', $2, true)",
            TRACEPARENT,
            "vendor=a1",
        )
        ids = await sql_inserts(jm, conn, 60)
    later = await sql_inserts(jm, conn, 70)
    for job_id in ids:
        assert await stored_context(jm, job_id) == {"traceparent": TRACEPARENT, "tracestate": "vendor=a1"}
    for job_id in later:
        assert await stored_context(jm, job_id) is None
    assert await jm.run() == 6
    for job_id in ids:
        [run] = runs_of(spans, job_id)
        assert run.context is not None and run.parent is not None
        assert (run.context.trace_id, run.parent.span_id) == (TRACE_ID, SPAN_ID)


@pytest.mark.parametrize("traceparent", MALFORMED)
async def test_a_malformed_context_is_not_stored_and_breaks_nothing(
    jm: JobMaster, conn: asyncpg.Connection, spans: SwitchedExporter, traceparent: str
) -> None:
    """From a SQL client (each entry point) and from the library's own statements (the plain
    insert, the full one, the bulk one): the jobs are inserted without a context and run in traces
    of their own."""
    async with conn.transaction():
        await conn.execute("SELECT set_config('jobmaster.traceparent', $1, true)", traceparent)
        ids = await sql_inserts(jm, conn, 80)
    store = jm._store
    fast = await store.insert_job_fast("tasks_for_tests", "add", 0, '{"a": 90}', traceparent=traceparent)
    assert fast is not None  # the plain statement inserted it
    ids.append(fast)
    ids.append(await store.insert_job("tasks_for_tests", "add", 0, '{"a": 91}', traceparent=traceparent))
    ids += await store.insert_jobs("tasks_for_tests", "add", 0, '[{"a": 92}]', traceparent=traceparent)
    for job_id in ids:
        assert isinstance(job_id, uuid.UUID) and await stored_context(jm, job_id) is None
    assert await jm.run() == len(ids)
    for job_id in ids:
        [run] = runs_of(spans, job_id)
        assert run.parent is None and (run.attributes or {}).get("jobmaster.outcome") == "completed"


@pytest.mark.parametrize("tracestate", ["é=1", "a=" + "b" * 600, "a=b\tc"])
async def test_a_malformed_tracestate_is_left_out(jm: JobMaster, conn: asyncpg.Connection, tracestate: str) -> None:
    async with conn.transaction():
        await conn.execute(
            "SELECT set_config('jobmaster.traceparent', $1, true), set_config('jobmaster.tracestate', $2, true)",
            TRACEPARENT,
            tracestate,
        )
        ids = await sql_inserts(jm, conn, 100)
    ids.append(
        await jm._store.insert_job("tasks_for_tests", "add", 0, '{"a": 110}', None, None, TRACEPARENT, tracestate)
    )
    for job_id in ids:
        assert await stored_context(jm, job_id) == {"traceparent": TRACEPARENT}


@pytest.mark.parametrize(
    "stored",
    ['"text"', "[1, 2]", '{"traceparent": 5}', '{"traceparent": ["a", "b"]}', "{}", '{"traceparent": null}'],
)
async def test_a_context_changed_behind_the_library_s_back_breaks_nothing(
    jm: JobMaster, conn: asyncpg.Connection, spans: SwitchedExporter, stored: str
) -> None:
    """A column written directly (not through the checked insert) still lets the job run."""
    job_id = await jm.insert_job("tasks_for_tests", "add", 0, {"a": 120})
    await conn.execute(f"UPDATE {q(jm)}.jobs SET trace_context = $1::text::jsonb WHERE job_id = $2", stored, job_id)
    async with worker(jm):
        await until(lambda: complete(jm, job_id), "the job to complete")


# -- without opentelemetry ------------------------------------------------------------------

SCRIPT = """
import asyncio, sys
{hide}
from jobmaster_async import JobMaster
from tests import tasks_for_tests

async def main() -> None:
    jm = JobMaster({dsn!r}, schema={schema!r})
    try:
        await jm.deploy()
        ids = [await jm.insert_job("tasks_for_tests", "add", 0, {{"a": 1}})]
        ids += await jm.insert_jobs("tasks_for_tests", "multiply", 0, [{{"x": 2, "y": 3}}])
        ids.append(await jm.enqueue(tasks_for_tests.context_in_thread, "popped"))
        assert await jm.run() == 3
        ids.append(await jm.insert_job("tasks_for_tests", "context_async", 0, {{"key": "dispatched"}}))
        worker = asyncio.create_task(jm.run_forever(2))
        while (await jm.get_job(ids[-1])).status != "complete":
            await asyncio.sleep(0.02)
        await jm.stop()
        await worker
        for job_id in ids:
            job = await jm.get_job(job_id)
            assert job.status == "complete" and job.trace_context is None, job
        assert (await jm.get_job(ids[2])).result == [None, None]
    finally:
        await jm.close()
    loaded = [name for name, module in sys.modules.items() if name.startswith("opentelemetry") and module is not None]
    assert not loaded, loaded
    print("ok")

asyncio.run(main())
"""


@pytest.mark.parametrize("hidden", [True, False], ids=["not installed", "installed, not imported"])
async def test_without_opentelemetry_inserting_and_running_work(dsn: str, schema_name: str, hidden: bool) -> None:
    """In a process where opentelemetry cannot be imported (as without the extra), and in one
    where it could be but the application never imported it: jobs are inserted and run (pop_job
    and run_forever, async and thread), and the package imports no part of opentelemetry."""
    hide = "sys.modules['opentelemetry'] = None  # as if not installed: importing it fails" if hidden else ""
    script = SCRIPT.format(hide=hide, dsn=dsn, schema=schema_name)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", textwrap.dedent(script)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        await drop_schema(dsn, schema_name)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


def test_tracing_keeps_to_its_module() -> None:
    """Every use of opentelemetry in the package is in jobmaster_async/tracing.py."""
    root = Path(__file__).parent.parent / "jobmaster_async"
    users = sorted(
        str(path.relative_to(root)) for path in root.rglob("*.py") if "opentelemetry" in path.read_text("utf-8")
    )
    assert users == ["tracing.py"]

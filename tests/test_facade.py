"""One door: the dashboard (web/) and the CLI (cli/) read through JobMaster's public API, never its
internals nor the worker's modules; the read API returns what the dashboard shows; and the blocking
facade offers every public async method of JobMaster."""

from __future__ import annotations

import ast
import inspect
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import jobmaster_async
from jobmaster_async import JobMaster, sync
from jobmaster_async.ids import resolve_job_id
from jobmaster_async.web import Dashboard, create_app
from tests.web_support import client

T = "tasks_for_tests"
ROOT = Path(jobmaster_async.__file__).parent

#: Public async methods that the blocking facade leaves out, and why: each gives an object bound to
#: the event loop it was made on (a connection), of no use to blocking code.
LOOP_BOUND = {"open_connection", "watch"}


def _sources(folder: str) -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), str(path))) for path in sorted((ROOT / folder).rglob("*.py"))]


def _imported(path: Path, tree: ast.Module) -> set[str]:
    """The modules a file imports, as absolute names, wherever in it (TYPE_CHECKING included)."""
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_web_imports_nothing_from_the_worker() -> None:
    checked = 0
    for path, tree in _sources("web"):
        imported = _imported(path, tree)
        assert imported, path
        worker = sorted(m for m in imported if m == "jobmaster_async.worker" or m.startswith("jobmaster_async.worker."))
        assert not worker, f"{path.name} imports {worker}"
        checked += 1
    assert checked >= 7  # every module of web/, not an empty glob


def test_the_import_check_sees_a_worker_import() -> None:
    """The check above would catch one, relative or absolute, under TYPE_CHECKING too."""
    path = ROOT / "web" / "example.py"  # never written: parsed from text
    for source in (
        "from ..worker.listener import parse_notification",
        "from ..worker import outage",
        "import jobmaster_async.worker.outage",
        "if TYPE_CHECKING:\n    from ..worker.backend import Worker",
    ):
        imported = _imported(path, ast.parse(source))
        assert any(m.startswith("jobmaster_async.worker") for m in imported), source


def test_the_worker_depends_on_what_it_uses_of_the_store_not_on_the_store() -> None:
    """The dispatcher's Backend protocol (worker/shutdown.py) and the listener name protocols
    (db.ports), never the concrete Store; the dispatcher names no store at all."""
    for name in ("dispatcher.py", "shutdown.py", "listener.py"):
        path = ROOT / "worker" / name
        imported = _imported(path, ast.parse(path.read_text()))
        if name != "dispatcher.py":
            assert "jobmaster_async.db.ports" in imported, name
        assert not any(m.startswith("jobmaster_async.db.store") for m in imported), name


def _jobmaster_attributes() -> tuple[set[str], set[str]]:
    """The attributes of a JobMaster (no connection opened): public and private."""
    jm = JobMaster("postgresql://nobody@localhost/nothing", schema="facade_check")
    names = set(dir(jm)) | set(vars(jm))
    return {n for n in names if not n.startswith("_")}, {n for n in names if n.startswith("_") and not n.endswith("__")}


def _jobmaster_uses(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, attribute) of every ``jm.x`` / ``self.jm.x`` / ``reader.x`` in a file."""
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id == "jm") or (
                isinstance(owner, ast.Attribute) and owner.attr == "jm"
            ):
                uses.append((node.lineno, node.attr))
    return uses


def test_the_cli_and_the_dashboard_use_only_public_attributes_of_jobmaster() -> None:
    public, private = _jobmaster_attributes()
    assert {"_store", "_worker"} <= private and not {"store", "worker"} & public
    seen: set[str] = set()
    for folder in ("web", "cli"):
        for path, tree in _sources(folder):
            for line, attribute in _jobmaster_uses(tree):
                where = f"{path.relative_to(ROOT)}:{line}: jm.{attribute}"
                assert not attribute.startswith("_"), where
                assert attribute in public, f"{where} is no attribute of JobMaster"
                seen.add(attribute)
    # the check looked at the reads the dashboard and the CLI make
    assert {"queue_depth", "deployed_tasks", "jobs_page", "schema_version", "worker_tasks", "watch"} <= seen


def test_the_blocking_facade_offers_every_public_async_method() -> None:
    asynchronous = {
        name
        for name, member in inspect.getmembers(JobMaster)
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    }
    assert {"prune", "queue_depth", "get_job", "run_forever"} <= asynchronous
    missing = sorted(name for name in asynchronous - LOOP_BOUND if not hasattr(sync.JobMaster, name))
    assert not missing, f"jobmaster_async.sync.JobMaster lacks {missing}"
    for name in sorted(asynchronous - LOOP_BOUND):
        blocking = getattr(sync.JobMaster, name)
        assert not inspect.iscoroutinefunction(blocking), name
        wanted = [p for p in inspect.signature(getattr(JobMaster, name)).parameters if p != "self"]
        offered = inspect.signature(blocking).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in offered.values()):
            continue  # passes its keyword arguments on (run_forever's options, jobs_page's filters)
        assert [p for p in offered if p != "self"] == wanted, name


# -- the read API returns what the dashboard shows --------------------------------------------------


@pytest.fixture
async def dash(jm: JobMaster) -> AsyncIterator[Dashboard]:
    app = create_app(jm, secret="a secret for the facade tests")
    try:
        yield app
    finally:
        await app.aclose()


async def queue(jm: JobMaster) -> dict[str, uuid.UUID]:
    """A finished job, two due ones, a scheduled one and a blocked one (a dependency pair)."""
    done = await jm.insert_job(T, "add", 0, {"a": 1})
    assert await jm.run() == 1
    return {
        "done": done,
        "due": await jm.insert_job(T, "add", 0, {"a": 2}),
        "due too": await jm.insert_job(T, "add", 0, {"a": 3}),
        "later": await jm.insert_job(T, "add", 0, {"a": 4}, run_at=timedelta(hours=1)),
        "blocked": await jm.insert_job(T, "doubled", 0, {"n": 21}),
    }


async def test_the_read_api_returns_what_the_dashboard_shows(jm: JobMaster, dash: Dashboard) -> None:
    await queue(jm)
    depth = {d.name: d for d in await jm.queue_depth()}
    assert (depth[f"{T}.add"].waiting, depth[f"{T}.add"].scheduled) == (2, 1)
    assert depth[f"{T}.doubled"].blocked == 1 and depth[f"{T}.base"].waiting == 1
    assert sum(d.total for d in depth.values()) == sum((await jm.active_counts()).values()) == 5

    snapshot = await dash.broadcaster.snapshot(max_age=0)
    assert list(snapshot.depth) == list(depth.values())
    assert snapshot.totals == {"waiting": 3, "scheduled": 1, "blocked": 1, "running": 0}
    workers = await jm.workers()
    assert [w["worker_id"] for w in snapshot.workers] == [w["worker_id"] for w in workers] == [jm.worker_id]
    assert workers[0]["alive"] and snapshot.workers[0]["alive"]

    # the charts: the events per minute the read API gives are those the overview draws
    rows, _since = await jm.events_per_minute()
    by_reason: dict[str, int] = {}
    for row in rows:
        by_reason[row["reason"]] = by_reason.get(row["reason"], 0) + row["n"]
    drawn: dict[str, int] = {}
    for _minute, counts in snapshot.chart:
        for reason, n in counts.items():
            drawn[reason] = drawn.get(reason, 0) + n
    assert drawn == by_reason and by_reason["completed"] == 1

    # /metrics' gauge of the active jobs (scheduled ones count as waiting)
    async with client(dash) as http:
        metrics = (await http.get("/metrics")).text
        listing = (await http.get("/jobs")).text
    gauge = {
        (s.labels["task_key"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "jobmaster_jobs"
        for s in family.samples
    }
    for d in depth.values():
        assert gauge[(d.task_key, "waiting")] == d.waiting + d.scheduled
        assert gauge[(d.task_key, "blocked")] == d.blocked and gauge[(d.task_key, "running")] == d.running

    # the job list shows the jobs of jobs_page, newest first
    page = [row["job_id"] for row in await jm.jobs_page(limit=50)]
    assert page == sorted(page, reverse=True) and set(page) == {job.job_id for job in await jm.jobs()}
    for job_id in page:
        assert str(job_id) in listing


async def test_ids_and_schema_reads(jm: JobMaster) -> None:
    ids = await queue(jm)
    assert await jm.schema_version() == jm.sql.latest_version
    assert {(t["type_key"], t["task_key"]) for t in await jm.deployed_tasks()} >= {(T, "add"), (T, "doubled")}
    assert await resolve_job_id(jm, ids["later"].hex[-12:]) == ids["later"]
    [found] = await jm.find_jobs(str(ids["due"])[-14:])
    assert found.job_id == ids["due"] and found.status == "waiting"
    up, down = await jm.dependency_tree(ids["blocked"])
    assert [row["job_id"] for row in up] and not down
    assert f"{T}.add" in await jm.worker_tasks()


async def test_a_schema_never_deployed_has_no_version(dsn: str) -> None:
    async with JobMaster(dsn, schema=f"never_{uuid.uuid4().hex[:8]}") as jm:
        assert await jm.schema_version() is None

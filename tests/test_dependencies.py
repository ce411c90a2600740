"""Dependencies resolved in SQL at insert time: the seed example, chains, fan-in, freshness,
`same` arithmetic, failure propagation and the linking race."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import asyncpg
import pytest

from jobmaster_async import JobMaster
from tests.conftest import q
from tests.polling import until
from tests.tasks_for_tests import CHAIN_DEPTH


def read(path: str) -> str:
    return Path(path).read_text()


async def test_seed_example(jm: JobMaster, tmp_path: Path) -> None:
    f, g = str(tmp_path / "f.txt"), str(tmp_path / "g.txt")
    # bar(F, 5): foo(F, 5) is created (number inherited from bar), then bar runs
    bar_id = await jm.insert_job("nice_tasks", "bar", 10, {"file_path": f, "number": 5})
    bar = await jm.get_job(bar_id)
    assert bar is not None and bar.status == "blocked"
    [foo] = await jm.jobs(task_key="foo")
    assert foo.arguments == {"file_path": f, "number": 5} and foo.priority == 11
    assert await jm.run() == 2
    assert read(f) == "10A"

    # baz(F): foo(F, number=10) is created; bar is fresh so it is not re-run
    baz_id = await jm.insert_job("nice_tasks", "baz", 1, {"file_path": f})
    foos = await jm.jobs(task_key="foo", status="waiting")
    assert [j.arguments for j in foos] == [{"file_path": f, "number": 10}]
    assert await jm.run() == 2
    baz = await jm.get_job(baz_id)
    assert baz is not None and baz.status == "complete"
    assert read(f) == "10"  # foo(F, 10) rewrote the file; bar did not run again
    assert len(await jm.jobs(task_key="bar")) == 1

    # baz(G): no bar ever ran for G, and bar's number cannot be known: baz fails, nothing created
    baz_g = await jm.insert_job("nice_tasks", "baz", 1, {"file_path": g})
    job = await jm.get_job(baz_g)
    assert job is not None and job.status == "failed"
    assert job.message is not None and "nice_tasks.bar" in job.message and '"number"' in job.message
    assert [j.arguments["file_path"] for j in await jm.jobs(task_key="foo")].count(g) == 0


async def test_matching_uses_only_specified_arguments(jm: JobMaster) -> None:
    await jm.insert_job("nice_tasks", "foo", 1, {"file_path": "/x", "number": 99})
    await jm.run()
    bar = await jm.insert_job("nice_tasks", "bar", 1, {"file_path": "/x", "number": 5})
    job = await jm.get_job(bar)
    assert job is not None and job.status == "waiting"  # foo(/x, 99) satisfies bar(/x, 5)


async def test_pending_dependency_is_linked_and_its_priority_raised(jm: JobMaster) -> None:
    foo = await jm.insert_job("nice_tasks", "foo", 1, {"file_path": "/p", "number": 1})
    bar = await jm.insert_job("nice_tasks", "bar", 7, {"file_path": "/p", "number": 2})
    assert [d["job_id"] for d in await jm.dependencies(bar)] == [foo]
    job = await jm.get_job(foo)
    assert job is not None and job.priority == 8
    assert len(await jm.jobs(task_key="foo")) == 1


async def test_stale_dependency_runs_again(jm: JobMaster, conn: asyncpg.Connection) -> None:
    await jm.insert_job("nice_tasks", "foo", 1, {"file_path": "/s", "number": 1})
    await jm.run()
    # foo finished 7 hours ago: outside bar's 6-hour window
    await conn.execute(f"UPDATE {q(jm)}.jobs SET finished_at = now() - interval '7 hours'")
    bar = await jm.insert_job("nice_tasks", "bar", 1, {"file_path": "/s", "number": 2})
    job = await jm.get_job(bar)
    assert job is not None and job.status == "blocked"
    assert len(await jm.jobs(task_key="foo")) == 2


async def test_same_arithmetic(jm: JobMaster) -> None:
    doubled = await jm.insert_job("tasks_for_tests", "doubled", 1, {"n": 4})
    [dep] = await jm.dependencies(doubled)
    base = await jm.get_job(dep["job_id"])
    assert base is not None and base.arguments == {"n": 8}
    halved = await jm.insert_job("tasks_for_tests", "halved", 1, {"n": 16})
    assert [d["job_id"] for d in await jm.dependencies(halved)] == [base.job_id]  # 16 / 2 = 8: the same one
    odd = await jm.get_job(await jm.insert_job("tasks_for_tests", "halved", 1, {"n": 5}))
    assert odd is not None and odd.status == "failed"
    assert odd.message is not None and "tasks_for_tests.base" in odd.message and '"n"' in odd.message
    assert await jm.run() == 3


async def test_chain_inserted_with_add_job_runs_in_order(jm: JobMaster, conn: asyncpg.Connection) -> None:
    top = await conn.fetchval(
        f"SELECT {q(jm)}.add_job('tasks_for_tests', $1, 1, $2::json)",
        f"link_{CHAIN_DEPTH - 1}",
        json.dumps({"run": "r1"}),
    )
    assert len(await jm.jobs(status="blocked")) == CHAIN_DEPTH - 1
    assert [j.task_key for j in await jm.jobs(status="waiting")] == ["link_0"]
    assert await jm.run() == CHAIN_DEPTH
    rows = await conn.fetch(
        f"SELECT t.task_key, j.started_at, j.finished_at FROM {q(jm)}.jobs j JOIN {q(jm)}.tasks t USING (task_id) "
        "ORDER BY j.started_at"
    )
    assert [r["task_key"] for r in rows] == [f"link_{k}" for k in range(CHAIN_DEPTH)]
    for before, after in itertools.pairwise(rows):
        assert before["finished_at"] <= after["started_at"]
    job = await jm.get_job(top)
    assert job is not None and job.status == "complete"


async def test_fan_in_creates_the_shared_dependency_once(jm: JobMaster) -> None:
    ids = await jm.insert_jobs("tasks_for_tests", "fan", 1, [{"i": i, "key": "K"} for i in range(200)])
    assert len(set(ids)) == 200
    setups = await jm.jobs(task_key="shared_setup")
    assert len(setups) == 1 and setups[0].priority == 2
    assert len(await jm.jobs(status="blocked", limit=1000)) == 200
    assert await jm.run() == 201
    assert len(await jm.jobs(status="complete", limit=1000)) == 201


async def test_failure_propagates_through_two_levels(jm: JobMaster) -> None:
    top = await jm.insert_job("tasks_for_tests", "top_of_broken", 1, {"key": "k"})
    assert await jm.run() == 1
    for task_key, names in (
        ("above_broken", "tasks_for_tests.broken"),
        ("top_of_broken", "tasks_for_tests.above_broken"),
    ):
        [failed] = await jm.jobs(task_key=task_key)
        assert failed.status == "failed"
        assert failed.message is not None and names in failed.message
    job = await jm.get_job(top)
    assert job is not None and job.attempts == 0  # never started: a dependency failure is final


async def test_cancelled_dependency_fails_dependents(jm: JobMaster) -> None:
    bar = await jm.insert_job("nice_tasks", "bar", 1, {"file_path": "/c", "number": 1})
    [foo] = await jm.jobs(task_key="foo")
    await jm.cancel(foo.job_id)
    job = await jm.get_job(bar)
    assert job is not None and job.status == "failed"
    assert job.message is not None and "cancelled" in job.message and str(foo.job_id) in job.message


async def test_linking_cannot_race_with_completion(jm: JobMaster, dsn: str, tmp_path: Path) -> None:
    """A dependent linked to a running dependency while that dependency completes is never left
    blocked: either it links first (and is unblocked by the completion) or sees it complete."""
    for round_ in range(20):
        path = str(tmp_path / f"race-{round_}")
        await jm.insert_job("nice_tasks", "foo", 1, {"file_path": path, "number": 1})
        job = await jm.pop_job()
        assert job is not None
        inserter = await asyncpg.connect(dsn)
        try:
            args = json.dumps({"file_path": path, "number": 2})
            _, bar_id = await asyncio.gather(
                job.execute(),
                inserter.fetchval(f"SELECT {q(jm)}.add_job('nice_tasks', 'bar', 1, $1::json)", args),
            )
        finally:
            await inserter.close()
        bar = await jm.get_job(bar_id)
        assert bar is not None and bar.status == "waiting", round_
        assert await jm.run() == 1


async def test_a_dependency_finishing_while_being_linked_is_seen_finished(
    jm: JobMaster, dsn: str, conn: asyncpg.Connection
) -> None:
    """The insert plans with foo running and links bar to it; its check at commit waits for the
    row lock held by foo's completion, whose settling could not see the link. After that
    commits, the check must see foo finished and move bar to waiting, not leave it blocked."""
    foo_id = await jm.insert_job("nice_tasks", "foo", 1, {"file_path": "/lock", "number": 1})
    job = await jm.pop_job()
    assert job is not None and job.job_id == foo_id
    completer = await asyncpg.connect(dsn)
    inserter = await asyncpg.connect(dsn)
    try:
        transaction = completer.transaction()
        await transaction.start()
        await completer.execute(
            f"UPDATE {q(jm)}.jobs SET status = 'complete', finished_at = now() WHERE job_id = $1", foo_id
        )
        await completer.execute(f"SELECT {q(jm)}._settle(ARRAY[$1::uuid])", foo_id)
        args = json.dumps({"file_path": "/lock", "number": 2})
        insert = asyncio.create_task(
            inserter.fetchval(f"SELECT {q(jm)}.add_job('nice_tasks', 'bar', 1, $1::json)", args)
        )
        waiting_pid = inserter.get_server_pid()

        async def insert_waits_for_the_lock() -> bool:
            query = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1"
            return bool(await conn.fetchval(query, waiting_pid))

        await until(insert_waits_for_the_lock, "the insert to wait for the row lock")
        await transaction.commit()
        bar = await jm.get_job(await insert)
    finally:
        await completer.close()
        await inserter.close()
    assert bar is not None and bar.status == "waiting"
    [dependency] = await jm.dependencies(bar.job_id)
    assert dependency["job_id"] == foo_id and dependency["status"] == "complete"


async def test_a_batch_fails_only_the_elements_whose_dependencies_cannot_be_created(
    jm: JobMaster, tmp_path: Path
) -> None:
    f, g = str(tmp_path / "f.txt"), str(tmp_path / "g.txt")
    await jm.insert_job("nice_tasks", "bar", 1, {"file_path": f, "number": 1})
    assert await jm.run() == 2
    # baz(F): bar(F) is fresh, foo(F, 10) is created. baz(G): bar(G) cannot be created (number
    # unknown), so baz(G) fails and foo(G, 10) is not created either.
    ok, failed, same_ok = await jm.insert_jobs(
        "nice_tasks", "baz", 1, [{"file_path": f}, {"file_path": g}, {"file_path": f}]
    )
    assert ok == same_ok
    statuses = {j.job_id: j for j in await jm.jobs(task_key="baz")}
    assert statuses[ok].status == "blocked" and statuses[failed].status == "failed"
    assert [j.arguments for j in await jm.jobs(task_key="foo", status="waiting")] == [{"file_path": f, "number": 10}]
    assert await jm.run() == 2


async def test_a_dependency_with_all_waits_for_every_child(jm: JobMaster) -> None:
    job_id = await jm.insert_job("tasks_for_tests", "painted_in_every_colour", 1, {"item": "car"})
    [parent] = await jm.dependencies(job_id)
    children = await jm.dependencies(parent["job_id"])
    assert parent["status"] == "blocked" and len(children) == 2
    assert await jm.run() == 3
    job = await jm.get_job(job_id)
    assert job is not None and job.status == "complete"
    assert (await jm.get_job(parent["job_id"])).status == "complete"  # type: ignore[union-attr]


async def test_a_dependency_with_all_that_fails_at_creation_fails_the_dependent(jm: JobMaster) -> None:
    job_id = await jm.insert_job("tasks_for_tests", "all_tiles", 1, {})
    job = await jm.get_job(job_id)
    assert job is not None and job.status == "failed"
    assert job.message is not None and "tasks_for_tests.tile" in job.message


async def test_dependents_never_run_before_their_dependencies(
    jm: JobMaster, dsn: str, conn: asyncpg.Connection
) -> None:
    await jm.insert_jobs("tasks_for_tests", "fan", 1, [{"i": i, "key": f"k{i % 10}"} for i in range(40)])
    masters = [JobMaster(dsn, schema=jm.schema) for _ in range(4)]
    checked = 0

    async def work(master: JobMaster) -> None:
        nonlocal checked
        pool = await master._store.pool()
        while (await pool.fetchval(f"SELECT count(*) FROM {q(jm)}.jobs WHERE status <> 'complete'")) > 0:
            job = await master.pop_job()
            if job is None:
                await asyncio.sleep(0.005)  # polling: another worker's job unblocks it (bounded below)
                continue
            if job.task_key == "fan":
                for dep in await master.dependencies(job.job_id):
                    assert dep["status"] == "complete"
                    checked += 1
            await job.execute()

    try:
        await asyncio.wait_for(asyncio.gather(*(work(m) for m in masters)), 60)
    finally:
        for m in masters:
            await m.close()
    assert checked == 40
    statuses = await conn.fetch(f"SELECT status, count(*) FROM {q(jm)}.jobs GROUP BY status")
    assert {r["status"]: r["count"] for r in statuses} == {"complete": 50}


@pytest.mark.parametrize("hours", [0, -1])
def test_hours_must_be_positive(hours: float) -> None:
    from jobmaster_async import Dependency, TaskDefinitionError

    with pytest.raises(TaskDefinitionError, match="hours"):
        Dependency("a.b", hours)

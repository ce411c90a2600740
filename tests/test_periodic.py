"""Periodic tasks (DESIGN 9 "Periodic tasks"): deploy() stores the schedules (the last deploy wins;
a changed schedule is a new one; a task's removed schedules go), each tick creates exactly one
job across worker processes, downtime gives one catch-up job, and a tick whose identical previous
job is still active dedupes into it. Ticks far from now are computed, not waited for."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobmaster_async import Cron, JobMaster, TaskDefinitionError, task
from jobmaster_async.db.sql import channel_name
from jobmaster_async.db.ticks import Ticks
from jobmaster_async.events import Count, Events, TickFired
from jobmaster_async.worker.outage import Outage
from jobmaster_async.worker.scheduler import Scheduler
from tests.conftest import q, worker
from tests.polling import until, within
from tests.processes import worker_process

SCRATCH = "scratch_periodic"


@pytest.fixture
def define(forget: None) -> Callable[..., Any]:
    """Registers ``periodic(n: int = 0)`` of type key scratch_periodic with the given crons (again
    and again: the same function, so each call replaces the definition), removed afterwards."""

    def define_(cron: Any) -> Any:
        async def periodic(n: int = 0) -> int:
            return n

        return task(type_key=SCRATCH, cron=cron)(periodic)

    return define_


async def rows(conn: asyncpg.Connection, jm: JobMaster) -> list[dict[str, Any]]:
    found = await conn.fetch(
        f"SELECT s.*, t.task_key FROM {q(jm)}.schedules AS s JOIN {q(jm)}.tasks AS t USING (task_id) "
        "ORDER BY s.schedule_id"
    )
    return [{**row, "arguments": json.loads(row["arguments"])} for row in found]


async def periodic_jobs(conn: asyncpg.Connection, jm: JobMaster, task_key: str = "periodic") -> list[dict[str, Any]]:
    found = await conn.fetch(
        f"SELECT j.* FROM {q(jm)}.jobs AS j JOIN {q(jm)}.tasks AS t USING (task_id) "
        "WHERE t.task_key = $1 ORDER BY j.seq",
        task_key,
    )
    return [{**row, "arguments": json.loads(row["arguments"])} for row in found]


def far_from_now() -> str:
    """An hourly expression whose ticks are half an hour from now either way: no tick falls due
    while a test runs."""
    return f"{(datetime.now(UTC).minute + 30) % 60} * * * *"


# -- deploy ----------------------------------------------------------------------------------------


async def test_deploy_stores_changes_and_removes_schedules(
    jm: JobMaster, conn: asyncpg.Connection, define: Callable[..., Any]
) -> None:
    daily = Cron("0 3 * * *", arguments={"n": 1}, priority=2, timezone="Europe/Paris")
    define([daily, "*/5 * * * *"])
    await jm.deploy()
    first = await rows(conn, jm)
    assert [(r["expression"], r["timezone"], r["arguments"], r["priority"]) for r in first] == [
        ("0 3 * * *", "Europe/Paris", {"n": 1}, 2),
        ("*/5 * * * *", "UTC", {}, 0),
    ]
    assert all(r["last_tick"] is None and r["cron_key"] for r in first)
    listed = await jm.schedules()
    assert [(s["task_key"], s["expression"], s["last_job_id"]) for s in listed] == [
        ("periodic", "0 3 * * *", None),
        ("periodic", "*/5 * * * *", None),
    ]
    for schedule in listed:
        assert schedule["next_tick"] > datetime.now(UTC)

    # the same again: kept as they are (creation time, last tick)
    await jm.deploy()
    assert await rows(conn, jm) == first

    # a change of any part is a new schedule, which starts at its next tick; the other stays
    define([Cron("0 3 * * *", arguments={"n": 2}, priority=2, timezone="Europe/Paris"), "*/5 * * * *"])
    await jm.deploy()
    second = await rows(conn, jm)
    assert [r["arguments"] for r in second] == [{}, {"n": 2}]
    assert second[0] == first[1]
    assert second[1]["schedule_id"] not in {r["schedule_id"] for r in first}
    assert second[1]["created_at"] > first[0]["created_at"]

    # a task that lost its schedules loses them in the database; another service's tasks keep theirs
    await conn.execute(f"""
        INSERT INTO {q(jm)}.tasks (type_key, task_key) VALUES ('elsewhere', 'thing');
        INSERT INTO {q(jm)}.schedules (task_id, cron_key, expression, timezone, arguments, priority)
        SELECT task_id, 'k', '0 0 * * *', 'UTC', '{{}}', 0 FROM {q(jm)}.tasks WHERE task_key = 'thing'
    """)
    define(None)
    await jm.deploy()
    assert [r["task_key"] for r in await rows(conn, jm)] == ["thing"]


async def test_deploy_refuses_a_cron_whose_arguments_the_task_refuses(
    jm: JobMaster, conn: asyncpg.Connection, define: Callable[..., Any]
) -> None:
    define(Cron("0 3 * * *", arguments={"n": "three"}))
    with pytest.raises(TaskDefinitionError, match=r'scratch_periodic\.periodic: cron .0 3 \* \* \*.*"n"'):
        await jm.deploy()
    assert await rows(conn, jm) == []


async def test_a_deploy_wakes_running_schedulers(
    idle_jm: JobMaster, conn: asyncpg.Connection, define: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A worker running before a schedule was deployed fires it: deploy() notifies. (Its
    scheduler has loaded a schedule half an hour away, and sleeps until then; the worker
    listens.)"""
    define(Cron(far_from_now()))
    await idle_jm.deploy()
    async with worker(idle_jm):
        await until(lambda: listening(conn, idle_jm), "the worker to LISTEN")
        await until(lambda: logged(caplog, "scheduler: 1 schedules"), "the scheduler to load its schedule")
        define("* * * * * *")
        other = JobMaster(idle_jm.dsn, schema=idle_jm.schema)
        try:
            await other.deploy()
        finally:
            await other.close()
        await until(lambda: has_jobs(conn, idle_jm, 1), "a tick of the new schedule", seconds=10)


async def listening(conn: asyncpg.Connection, jm: JobMaster) -> bool:
    """Is a connection listening on the schema's channel (its LISTEN done)?"""
    query = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' || $1 || '%' AND state = 'idle'"
    return bool(await conn.fetchval(query, channel_name(jm.schema)))


async def logged(caplog: pytest.LogCaptureFixture, message: str) -> bool:
    return any(record.getMessage() == message for record in caplog.records)


async def has_jobs(conn: asyncpg.Connection, jm: JobMaster, count: int) -> bool:
    return len(await periodic_jobs(conn, jm)) >= count


# -- ticks -----------------------------------------------------------------------------------------


@dataclass
class _Clock:
    """The scheduler's clock, which the test moves on."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


class _Noted:
    """The scheduler's statements (db.ticks), each load counted and each tick fired noted."""

    def __init__(self, ticks: Ticks) -> None:
        self.ticks = ticks
        self.loads = Count()
        self.tried: list[datetime] = []

    async def load(self, task_ids: list[int]) -> list[asyncpg.Record]:
        rows = await self.ticks.load(task_ids)
        self.loads.add()
        return rows

    async def fire(self, schedule_id: int, tick: datetime) -> uuid.UUID | None:
        self.tried.append(tick)
        return await self.ticks.fire(schedule_id, tick)


@contextlib.asynccontextmanager
async def running_scheduler(
    conn: asyncpg.Connection, jm: JobMaster, ticks: _Noted, clock: _Clock
) -> AsyncIterator[Scheduler]:
    """A scheduler of the schema's schedules on the test's clock, run until the block ends.

    Once its ``ticks.loads`` grew, it has also evaluated what it loaded: it does not yield between
    reading the schedules and firing the due ticks (``ticks.tried`` notes a fire before its
    statement runs), so nothing fired then means nothing was due."""
    task_ids = [row["task_id"] for row in await conn.fetch(f"SELECT DISTINCT task_id FROM {q(jm)}.schedules")]

    async def registered() -> list[int]:
        return task_ids

    scheduler = Scheduler(ticks, registered, Outage(Events()), clock=clock)  # type: ignore[arg-type]
    run = asyncio.create_task(scheduler.run())
    try:
        yield scheduler
    finally:
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run


async def test_downtime_gives_one_catch_up_job(
    idle_jm: JobMaster, conn: asyncpg.Connection, define: Callable[..., Any]
) -> None:
    """Five ticks missed while no worker ran: the scheduler inserts the latest one only; then
    it fires the next tick when its time comes; started again, it fires none of those again."""
    expression = far_from_now()
    cron = Cron(expression)
    define(cron)
    await idle_jm.deploy()
    now = datetime.now(UTC)
    latest = cron.latest_tick(now)
    await conn.execute(
        f"UPDATE {q(idle_jm)}.schedules SET last_tick = $1, created_at = $2",
        latest - timedelta(hours=5),
        latest - timedelta(days=1),
    )
    clock = _Clock(now)
    ticks = _Noted(idle_jm._store.ticks)
    async with running_scheduler(conn, idle_jm, ticks, clock) as scheduler:
        await within(scheduler.outage.events.wait_for(TickFired, 1), "the catch-up job")
        assert ticks.tried == [latest]
        [job] = await periodic_jobs(conn, idle_jm)
        [schedule] = await rows(conn, idle_jm)
        assert schedule["last_tick"] == latest and schedule["last_job_id"] == job["job_id"]
        assert job["arguments"] == {"n": 0} and job["priority"] == 0
        # the time of the next tick comes: it alone is fired (into the same job, still waiting)
        following = cron.next_tick(now)
        clock.now = following + timedelta(seconds=1)
        scheduler.reload()
        await within(scheduler.outage.events.wait_for(TickFired, 2), "the next tick")
    assert ticks.tried == [latest, following]
    # started again: those ticks are fired already; the one after is fired when it comes
    again = _Noted(idle_jm._store.ticks)
    async with running_scheduler(conn, idle_jm, again, clock) as scheduler:
        await within(again.loads.wait_for(1), "the schedules to be loaded")
        assert again.tried == []
        after = cron.next_tick(clock.now)
        clock.now = after + timedelta(seconds=1)
        scheduler.reload()
        await within(scheduler.outage.events.wait_for(TickFired, 1), "the tick after")
    assert again.tried == [after]
    assert [j["job_id"] for j in await periodic_jobs(conn, idle_jm)] == [job["job_id"]]
    [schedule] = await rows(conn, idle_jm)
    assert schedule["last_tick"] == after and schedule["last_job_id"] == job["job_id"]


class _OutageAtFirstFire:
    """The scheduler's statements (db.ticks), but the first tick it fires meets the database
    gone, and while it is away the clock moves on to ``back_at``. Every tick fired is noted."""

    def __init__(self, ticks: Ticks, clock: _Clock, back_at: datetime) -> None:
        self.ticks = ticks
        self.clock = clock
        self.back_at = back_at
        self.tried: list[datetime] = []

    async def load(self, task_ids: list[int]) -> list[asyncpg.Record]:
        return await self.ticks.load(task_ids)

    async def fire(self, schedule_id: int, tick: datetime) -> uuid.UUID | None:
        self.tried.append(tick)
        if len(self.tried) == 1:
            self.clock.now = self.back_at  # the outage lasts hours
            raise ConnectionResetError("the database server went away")
        return await self.ticks.fire(schedule_id, tick)


async def test_a_tick_fired_across_an_outage_is_the_latest_one_missed(
    idle_jm: JobMaster, conn: asyncpg.Connection, define: Callable[..., Any]
) -> None:
    """Issue 24: the scheduler found a tick due, the database went away for hours, and when it
    came back the fire retried with backoff recorded that stale tick, not the latest one missed
    during the outage (DESIGN 9: only the latest missed tick runs). The tick is computed at each
    try: the one recorded, and the only one fired, is the latest due when the database is back."""
    cron = Cron(far_from_now())  # hourly
    define(cron)
    await idle_jm.deploy()
    now = datetime.now(UTC)
    latest = cron.latest_tick(now)
    await conn.execute(
        f"UPDATE {q(idle_jm)}.schedules SET last_tick = $1, created_at = $2",
        latest - timedelta(hours=5),
        latest - timedelta(days=1),
    )
    task_ids = [row["task_id"] for row in await conn.fetch(f"SELECT task_id FROM {q(idle_jm)}.schedules")]

    async def registered() -> list[int]:
        return task_ids

    clock = _Clock(now - timedelta(hours=3))  # when the fire first failed
    stale = cron.latest_tick(clock.now)
    ticks = _OutageAtFirstFire(idle_jm._store.ticks, clock, back_at=now)
    scheduler = Scheduler(ticks, registered, Outage(Events()), clock=clock)  # type: ignore[arg-type]
    running = asyncio.create_task(scheduler.run())
    try:
        await within(scheduler.outage.events.wait_for(TickFired, 1), "the tick fired once the database is back")
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert stale == latest - timedelta(hours=3)
    assert ticks.tried == [stale, latest]  # the first try failed; the retry fired the latest tick
    [job] = await periodic_jobs(conn, idle_jm)
    [schedule] = await rows(conn, idle_jm)
    assert schedule["last_tick"] == latest and schedule["last_job_id"] == job["job_id"]


async def test_a_new_schedule_starts_at_its_next_tick(
    idle_jm: JobMaster, conn: asyncpg.Connection, define: Callable[..., Any]
) -> None:
    cron = Cron(far_from_now())
    define(cron)
    await idle_jm.deploy()  # its latest tick, half an hour ago, is before its creation
    now = datetime.now(UTC)
    clock = _Clock(now)
    ticks = _Noted(idle_jm._store.ticks)
    async with running_scheduler(conn, idle_jm, ticks, clock) as scheduler:
        await within(ticks.loads.wait_for(1), "the schedule to be loaded")
        assert ticks.tried == []
        assert await periodic_jobs(conn, idle_jm) == []
        [schedule] = await rows(conn, idle_jm)
        assert schedule["last_tick"] is None
        following = cron.next_tick(now)
        clock.now = following + timedelta(seconds=1)
        scheduler.reload()
        await within(scheduler.outage.events.wait_for(TickFired, 1), "its next tick")
    assert ticks.tried == [following]
    [job] = await periodic_jobs(conn, idle_jm)
    [schedule] = await rows(conn, idle_jm)
    assert schedule["last_tick"] == following and schedule["last_job_id"] == job["job_id"]


async def test_a_tick_dedupes_into_its_still_active_previous_job(
    idle_jm: JobMaster, conn: asyncpg.Connection, define: Callable[..., Any]
) -> None:
    """A tick job's arguments are exactly the Cron's: while the previous one still runs, the
    tick hands back its id and nothing piles up."""
    cron = Cron(far_from_now(), arguments={"n": 7}, priority=3)
    define(cron)
    await idle_jm.deploy()
    slow = JobMaster(idle_jm.dsn, schema=idle_jm.schema)
    try:
        previous = await idle_jm.insert_job(SCRATCH, "periodic", 3, {"n": 7})
        popped = await slow.pop_job()  # running, held by another worker
        assert popped is not None and popped.job_id == previous
        latest = cron.latest_tick(datetime.now(UTC))
        await conn.execute(f"UPDATE {q(idle_jm)}.schedules SET created_at = $1", latest - timedelta(days=1))
        async with worker(idle_jm):
            await until(lambda: fired(conn, idle_jm), "the tick", seconds=10)
        [job] = await periodic_jobs(conn, idle_jm)
        [schedule] = await rows(conn, idle_jm)
        assert job["job_id"] == previous and schedule["last_job_id"] == previous
        assert (await idle_jm.schedules())[0]["last_job_status"] == "running"
        await popped.execute()
    finally:
        await slow.close()


async def fired(conn: asyncpg.Connection, jm: JobMaster) -> bool:
    [schedule] = await rows(conn, jm)
    return schedule["last_tick"] is not None


async def test_fire_schedule_from_sql_is_a_compare_and_set(
    jm: JobMaster, conn: asyncpg.Connection, define: Callable[..., Any]
) -> None:
    """However many fire a tick, one job; an earlier tick than the last is not fired; a tick
    whose arguments the task refuses records nothing."""
    define(Cron("0 3 * * *", arguments={"n": 1}))
    await jm.deploy()
    [schedule] = await rows(conn, jm)
    tick = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    fire = f"SELECT {q(jm)}.fire_schedule($1, $2)"
    results = await asyncio.gather(*(fire_on_own_connection(jm, fire, schedule["schedule_id"], tick) for _ in range(8)))
    assert len([r for r in results if r is not None]) == 1
    assert await conn.fetchval(fire, schedule["schedule_id"], tick - timedelta(hours=1)) is None
    assert len(await periodic_jobs(conn, jm)) == 1
    await conn.execute(
        f'UPDATE {q(jm)}.schedules SET arguments = \'{{"n": "one"}}\' WHERE schedule_id = $1', schedule["schedule_id"]
    )
    with pytest.raises(asyncpg.PostgresError) as refused:
        await conn.fetchval(fire, schedule["schedule_id"], tick + timedelta(hours=1))
    assert refused.value.sqlstate == "JM400"
    assert (await rows(conn, jm))[0]["last_tick"] == tick


async def fire_on_own_connection(jm: JobMaster, statement: str, schedule_id: int, tick: datetime) -> uuid.UUID | None:
    conn = await asyncpg.connect(jm.dsn)
    try:
        job_id: uuid.UUID | None = await conn.fetchval(statement, schedule_id, tick)
        return job_id
    finally:
        await conn.close()


async def test_three_worker_processes_create_one_job_per_tick(
    jm: JobMaster, dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """An every-second schedule (tests/cron_tasks.py) fired by three worker processes for about 5
    seconds: each tick fired by exactly one of them (each logs the ticks it fired), every second
    from the first to the last, and one job per tick (or the previous one, still active, handed
    back: dedupe), never two. The first process deploys it; the others start while it fires."""
    options = ("--app", "tests.cron_tasks", "--concurrency", "2")
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    with contextlib.ExitStack() as stack:
        for number, path in enumerate(logs):
            log = stack.enter_context(path.open("wb"))
            deploy = ["--deploy"] if number == 0 else []
            stack.enter_context(worker_process(dsn, jm.schema, *options, *deploy, log=log))
            if number == 0:
                await until(lambda: has_jobs_of(conn, jm, "every_second", 1), "the first tick", seconds=30)
        await until(lambda: all_loaded(logs), "the three schedulers to load the schedule")
        # all three fire: five more ticks (a scenario's length, not a sync point: awaited in the database)
        start = await last_tick(conn, jm)
        await until(lambda: ticked_since(conn, jm, start, 5), "five more ticks")
    for path in logs:
        assert "scheduler: 1 schedules" in path.read_text()
    fired = [TICK.search(line) for path in logs for line in path.read_text().splitlines()]
    ticks = sorted((datetime.fromisoformat(m["tick"]), uuid.UUID(m["job"])) for m in fired if m)
    seconds = [int(tick.timestamp()) for tick, _ in ticks]
    assert len(seconds) >= 5
    assert seconds == list(range(seconds[0], seconds[0] + len(seconds))), "a tick fired twice, or not at all"
    jobs = await periodic_jobs(conn, jm, "every_second")
    assert [job["job_id"] for job in jobs] == list(dict.fromkeys(job_id for _, job_id in ticks))
    assert all(job["arguments"] == {"label": "every second"} for job in jobs)
    schedule = await conn.fetchrow(f"SELECT * FROM {q(jm)}.schedules")
    assert schedule is not None and (schedule["last_tick"], schedule["last_job_id"]) == ticks[-1]


#: A worker's log line for a tick it fired (worker/scheduler.py)
TICK = re.compile(r"cron_tasks\.every_second tick (?P<tick>\S+) \(.*\): job (?P<job>[0-9a-f-]{36})")


async def all_loaded(logs: list[Path]) -> bool:
    return all("scheduler: 1 schedules" in path.read_text() for path in logs)


async def last_tick(conn: asyncpg.Connection, jm: JobMaster) -> datetime:
    tick: datetime = await conn.fetchval(f"SELECT last_tick FROM {q(jm)}.schedules")
    return tick


async def ticked_since(conn: asyncpg.Connection, jm: JobMaster, start: datetime, seconds: int) -> bool:
    return await last_tick(conn, jm) >= start + timedelta(seconds=seconds)


async def has_jobs_of(conn: asyncpg.Connection, jm: JobMaster, task_key: str, count: int) -> bool:
    return len(await periodic_jobs(conn, jm, task_key)) >= count

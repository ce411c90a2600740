"""Chaos: two worker processes drain jobs while a fault strikes; afterwards, what became of each
job. Shared by tests/test_chaos.py (a few thousand jobs) and ``python -m benchmarks.chaos``.

Each job (``tasks_for_tests.chaos_run``: sleeps, then appends one line) writes a line per
execution: key, process, start and end, so lost and doubled jobs are counted from the file, and
recovery from when each worker started jobs again. The drain runs on a server of its own, with
commits waiting for the WAL (outcomes survive a crash; claims are committed without waiting, as
the worker does on purpose) and fsync off (an immediate stop is not a power cut).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import asyncpg

import tests.heartbeat_tasks  # registers chaos_run_in_process for the deploy
import tests.tasks_for_tests  # noqa: F401  (registers chaos_run for the deploy)
from jobmaster_async import JobMaster
from jobmaster_async.cli.embedded import TemporaryServer, temporary_server
from jobmaster_async.db.faults import database_fault
from jobmaster_async.db.sql import quote_identifier
from tests.processes import worker_process
from tests.proxy import Proxy

__all__ = ("CONCURRENCY", "SCENARIOS", "ChaosResult", "Scenario", "chaos_server", "run_scenario")

#: The chaos server: room for the workers and the faults' clients; durable commits, no fsync.
SERVER_SETTINGS = {"max_connections": "100", "fsync": "off"}

CONCURRENCY = 16
WORKERS = 2
TASK_SECONDS = 0.1
#: Heartbeats every second, rescue after 20 s without one, every round trip's deadline 3 s (a
#: black hole is noticed within about 3 s, long before the others would rescue its jobs).
WORKER_OPTIONS = (
    "--concurrency", str(CONCURRENCY), "--poll-interval", "1", "--heartbeat-interval", "1",
    "--connection-timeout", "3",
)  # fmt: skip
BLACK_HOLE_SECONDS = 10.0
TERMINATIONS = 20

KILL_ALL = """
    SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
     WHERE pid <> pg_backend_pid() AND datname = current_database() AND backend_type = 'client backend'
"""


@contextlib.contextmanager
def chaos_server() -> Iterator[TemporaryServer]:
    with temporary_server(SERVER_SETTINGS) as server:
        yield server


@dataclass(frozen=True)
class Execution:
    key: int
    pid: int
    started: float  # time.time()


@dataclass
class Drain:
    """One drain in progress: its server, schema, workers and the file the jobs write to."""

    server: TemporaryServer
    proxy: Proxy
    jm: JobMaster  # direct to the server, to watch
    jobs: int
    out: Path
    workers: list[subprocess.Popen[bytes]]
    lost_workers: set[int] = field(default_factory=set)  # pids killed on purpose
    #: starts one more worker process (appended to workers), stopped with the others
    respawn: Callable[[], subprocess.Popen[bytes]] | None = None

    def executions(self) -> list[Execution]:
        if not self.out.exists():
            return []
        found = []
        for line in self.out.read_text().splitlines():
            key, pid, started, _ = line.split()
            found.append(Execution(int(key), int(pid), float(started)))
        return found

    async def end_worker(self, signum: signal.Signals, deadline: float) -> tuple[int, int | None, float]:
        """Sends ``signum`` to the first worker (no longer a survivor then) and waits for it to
        exit; returns its pid, exit code (None: still running at the deadline), and when the
        signal was sent."""
        victim = self.workers[0]
        self.lost_workers.add(victim.pid)
        sent = time.time()
        victim.send_signal(signum)
        try:
            code: int | None = await asyncio.to_thread(victim.wait, max(deadline - sent, 1))
        except subprocess.TimeoutExpired:
            code = None
        return victim.pid, code, sent

    def survivors(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.workers if p.pid not in self.lost_workers]

    async def _value(self, query: str, *args: object) -> object:
        """A value from the database (None while it does not answer)."""
        try:
            async with self.jm.connection() as conn:
                return await conn.fetchval(query, *args)
        except Exception as exc:
            if not database_fault(exc):
                raise
            return None

    async def active(self) -> object:
        """Jobs waiting, blocked or running (None while the database does not answer)."""
        schema = quote_identifier(self.jm.schema)
        return await self._value(f"SELECT waiting + blocked + running FROM {schema}.active_counts()")

    async def status(self, job_id: uuid.UUID) -> object:
        """A job's status (None while the database does not answer)."""
        jobs = f"{quote_identifier(self.jm.schema)}.jobs"
        return await self._value(f"SELECT status FROM {jobs} WHERE job_id = $1", job_id)

    async def worker_row(self, pid: int) -> object:
        """Whether the workers table has a row of process ``pid`` (None: no answer)."""
        workers = f"{quote_identifier(self.jm.schema)}.workers"
        return await self._value(f"SELECT count(*) > 0 FROM {workers} WHERE pid = $1", pid)

    def _first_starts_after(self, moment: float) -> dict[int, float]:
        firsts: dict[int, float] = {}
        for e in self.executions():
            if e.started > moment:
                firsts[e.pid] = min(e.started, firsts.get(e.pid, e.started))
        return firsts

    async def recovery_after(self, moment: float, deadline: float) -> float | None:
        """Seconds from ``moment`` until every surviving worker started jobs again (None: the
        drain ended first, or the deadline passed)."""

        def recovered() -> bool:
            return all(p.pid in self._first_starts_after(moment) for p in self.survivors())

        async def settled() -> bool:
            return recovered() or await self.active() == 0

        await _eventually(settled, deadline)
        if not recovered():
            return None
        firsts = self._first_starts_after(moment)
        return max(firsts[p.pid] for p in self.survivors()) - moment


async def _eventually(check: Callable[[], Awaitable[bool]], deadline: float) -> bool:
    """Polls ``check`` (what other processes do) until it holds, or ``deadline`` passed."""
    while not await check():
        if time.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


# -- the faults: each strikes, then returns its recovery in seconds (None: not measured) ---------


async def terminate_backends(drain: Drain, deadline: float) -> float | None:
    """Every client backend terminated, TERMINATIONS times at random intervals."""
    killer = await asyncpg.connect(drain.server.dsn)
    try:
        for _ in range(TERMINATIONS):
            await asyncio.sleep(random.uniform(0.05, 0.25))
            await killer.fetchval(KILL_ALL)
    finally:
        await killer.close()
    return await drain.recovery_after(time.time(), deadline)


async def crash_server(drain: Drain, deadline: float) -> float | None:
    """The server stopped in immediate mode (a crash: recovery at start) and started again."""
    await asyncio.to_thread(drain.server.restart, "immediate")
    return await drain.recovery_after(time.time(), deadline)


async def kill_worker(drain: Drain, deadline: float) -> float | None:
    """One worker killed with SIGKILL; recovery: until its jobs were rescued (its row gone)."""
    pid, _, killed = await drain.end_worker(signal.SIGKILL, deadline)

    async def rescued() -> bool:
        return await drain.worker_row(pid) is False

    return time.time() - killed if await _eventually(rescued, deadline) else None


async def black_hole(drain: Drain, deadline: float) -> float | None:
    """The network between the workers and the server black-holed for BLACK_HOLE_SECONDS."""
    drain.proxy.blackhole()
    await asyncio.sleep(BLACK_HOLE_SECONDS)
    drain.proxy.resume()
    return await drain.recovery_after(time.time(), deadline)


#: How long exhaust_connections keeps max_connections filled: past the lapse of its scenario.
EXHAUSTED_SECONDS = 25.0
#: The workers' backends: every jobmaster_async connection but this process's own.
KILL_WORKERS = """
    SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
     WHERE application_name LIKE 'jobmaster_async:%' AND application_name <> $1
"""


async def exhaust_connections(drain: Drain, deadline: float) -> float | None:
    """``max_connections`` filled (by superuser connections, reserved slots included) and the
    workers' backends terminated, for EXHAUSTED_SECONDS: nobody can heartbeat, claim or record.
    Killed and filled again every 0.1 s, so that a connection a worker gets in between is short-
    lived. Every filler is closed at the end."""
    fillers: list[asyncpg.Connection] = []
    own = f"jobmaster_async:{os.getpid()}"
    settings = {"application_name": "chaos_filler"}
    try:
        end = time.time() + EXHAUSTED_SECONDS
        while time.time() < end:
            with contextlib.suppress(asyncpg.TooManyConnectionsError):
                while True:  # as many as the server takes
                    fillers.append(await asyncpg.connect(drain.server.dsn, server_settings=settings))
            if fillers:
                await fillers[0].fetchval(KILL_WORKERS, own)
            await asyncio.sleep(0.1)
    finally:
        await asyncio.gather(*(c.close(timeout=5) for c in fillers), return_exceptions=True)
    return await drain.recovery_after(time.time(), deadline)


async def terminate_worker(drain: Drain, deadline: float) -> float | None:
    """One worker sent SIGTERM; recovery: until it exited (its jobs finished or put back)."""
    _, code, stopped = await drain.end_worker(signal.SIGTERM, deadline)
    return time.time() - stopped if code == 0 else None


#: The job of a key: (type key, task key, seconds it runs).
JobOf = Callable[[int], tuple[str, str, float]]
#: Seconds of the long jobs of exhaust_connections' scenario: running (unrecorded) across the fault.
LONG_SECONDS = 12.0


def _long_and_short_jobs(key: int) -> tuple[str, str, float]:
    """Every fourth job in a process, the others async; one in 50 of each kind runs LONG_SECONDS
    (enough to hold most slots when the fault strikes), the others TASK_SECONDS."""
    if key % 4 == 0:
        return "heartbeat_tasks", "chaos_run_in_process", LONG_SECONDS if key % 200 == 0 else TASK_SECONDS
    return "tasks_for_tests", "chaos_run", LONG_SECONDS if key % 50 == 1 else TASK_SECONDS


async def poison_job(drain: Drain, deadline: float) -> float | None:
    """A job that kills every worker that runs it (os._exit), inserted at a higher priority than
    the drain's, so that it is claimed beside them; each worker it kills is started again.
    Recovery: until it failed (rescues used up), the drain's jobs beside it not charged."""
    respawn = drain.respawn
    assert respawn is not None
    job_id = await drain.jm.insert_job("tasks_for_tests", "poison", 10, {"key": "chaos"})
    inserted = time.time()

    async def failed() -> bool:
        for process in drain.survivors():
            if process.poll() is not None:  # killed by the poison job: lost, and started again
                drain.lost_workers.add(process.pid)
                respawn()
        return await drain.status(job_id) == "failed"

    return time.time() - inserted if await _eventually(failed, deadline) else None


@dataclass(frozen=True)
class Scenario:
    key: str
    fault: str
    strike: Callable[[Drain, float], Awaitable[float | None]]
    #: doubles allowed: claims lost in a crash (committed without waiting for the WAL) or held by
    #: a killed worker, at most `concurrency` per worker concerned
    doubles_allowed: int = 0
    through_proxy: bool = False
    lapse: str = "20"
    #: the job of each key: (type key, task key, seconds it runs)
    job: JobOf = lambda key: ("tasks_for_tests", "chaos_run", TASK_SECONDS)
    #: more options of the workers
    options: tuple[str, ...] = ()
    #: jobs besides the drain's that are to fail (the poison job)
    failed: int = 0


SCENARIOS = (
    Scenario("terminate", f"pg_terminate_backend of every client backend x {TERMINATIONS}", terminate_backends),
    Scenario("crash", "server crash (immediate stop) and start", crash_server, CONCURRENCY * WORKERS),
    Scenario("sigkill", "SIGKILL of one worker", kill_worker, CONCURRENCY, lapse="4"),
    Scenario("blackhole", f"network black-holed for {BLACK_HOLE_SECONDS:g} s", black_hole, through_proxy=True),
    Scenario("sigterm", "SIGTERM of one worker", terminate_worker),
    Scenario(
        "exhausted",
        f"max_connections filled and the workers' backends killed for {EXHAUSTED_SECONDS:g} s (async and process jobs)",
        exhaust_connections,
        job=_long_and_short_jobs,
        # the first worker back would rescue the other's jobs at once if it could
        options=("--app", "tests.tasks_for_tests,tests.heartbeat_tasks", "--rescue-interval", "1"),
    ),
    # five deaths (one beside the drain's jobs, uncharged, then rescues + 1 charged), each with
    # up to `concurrency` jobs of the drain held
    Scenario(
        "poison", "a job that kills its worker, beside the others", poison_job, CONCURRENCY * 5, lapse="4", failed=1
    ),
)


@dataclass(frozen=True)
class ChaosResult:
    scenario: Scenario
    jobs: int
    lost: int  # jobs never executed to the end
    doubled: int  # executions beyond the first
    recovery: float | None
    statuses: dict[str, int]  # of the jobs, at the end
    rescue_failures: int  # jobs failed because their worker was lost
    dead_survivors: int  # worker processes that were meant to survive and did not
    seconds: float  # the whole drain

    @property
    def left_running(self) -> int:
        return self.statuses.get("running", 0)


async def run_scenario(
    server: TemporaryServer, scenario: Scenario, jobs: int, directory: Path, time_limit: float = 120
) -> ChaosResult:
    """Drains ``jobs`` jobs with WORKERS worker processes while the scenario's fault strikes
    (once a tenth of them ran), within ``time_limit`` seconds."""
    out = directory / f"{scenario.key}.txt"
    began = time.time()
    deadline = began + time_limit
    async with _schema(server.dsn, jobs, out, scenario.job) as jm, Proxy(server.dsn) as proxy:
        dsn = proxy.dsn if scenario.through_proxy else server.dsn
        options = (*WORKER_OPTIONS, "--heartbeat-lapse", scenario.lapse, *scenario.options)
        with _workers(dsn, jm.schema, options, directory / scenario.key) as workers, contextlib.ExitStack() as more:

            def respawn() -> subprocess.Popen[bytes]:
                log = more.enter_context(open(f"{directory / scenario.key}-{len(workers)}.log", "wb"))
                workers.append(more.enter_context(worker_process(dsn, jm.schema, *options, log=log)))
                return workers[-1]

            drain = Drain(server, proxy, jm, jobs, out, workers, respawn=respawn)

            async def a_tenth_ran() -> bool:
                return len(drain.executions()) >= jobs // 10

            async def drained() -> bool:
                return await drain.active() == 0

            await _eventually(a_tenth_ran, deadline)
            recovery = await scenario.strike(drain, deadline)
            await _eventually(drained, deadline)
            seconds = time.time() - began
            dead = sum(1 for p in drain.survivors() if p.poll() is not None)
            for process in drain.survivors():
                process.send_signal(signal.SIGTERM)
            for process in drain.survivors():
                await asyncio.to_thread(process.wait, 30)
        await jm.close()  # its connections may have died with the fault: fresh ones
        statuses = await jm.counts()
        rescue_failures = await _rescue_failures(jm)
    runs = Counter(e.key for e in drain.executions())
    return ChaosResult(
        scenario=scenario,
        jobs=jobs,
        lost=sum(1 for key in range(jobs) if runs[key] == 0),
        doubled=sum(n - 1 for n in runs.values() if n > 1),
        recovery=recovery,
        statuses=statuses,
        rescue_failures=rescue_failures,
        dead_survivors=dead,
        seconds=seconds,
    )


@asynccontextmanager
async def _schema(dsn: str, jobs: int, out: Path, job: JobOf) -> AsyncIterator[JobMaster]:
    """A schema of its own with the jobs inserted in the order of their keys (``job`` says each
    key's); dropped afterwards."""
    schema = f"chaos_{uuid.uuid4().hex[:8]}"
    async with JobMaster(dsn, schema=schema) as jm:
        await jm.deploy()
        batches: list[tuple[str, str, list[dict[str, object]]]] = []  # runs of keys of one task
        for key in range(jobs):
            type_key, task_key, seconds = job(key)
            if not batches or batches[-1][:2] != (type_key, task_key):
                batches.append((type_key, task_key, []))
            batches[-1][2].append({"path": str(out), "key": key, "seconds": seconds})
        for type_key, task_key, arguments in batches:
            await jm.insert_jobs(type_key, task_key, 1, arguments)
        try:
            yield jm
        finally:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(f"DROP SCHEMA {quote_identifier(schema)} CASCADE")
            finally:
                await conn.close()


@contextlib.contextmanager
def _workers(dsn: str, schema: str, options: tuple[str, ...], logs: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """WORKERS worker processes, their output in ``logs``-<n>.log; each stopped on exit (killed
    if it does not stop within 30 s)."""
    with contextlib.ExitStack() as stack:
        files: list[IO[bytes]] = [stack.enter_context(open(f"{logs}-{n}.log", "wb")) for n in range(WORKERS)]
        yield [stack.enter_context(worker_process(dsn, schema, *options, log=f)) for f in files]


async def _rescue_failures(jm: JobMaster) -> int:
    failed = await jm.jobs(status="failed", limit=1_000_000)
    return sum(1 for job in failed if "lost" in (job.message or ""))

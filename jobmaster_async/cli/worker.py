"""``jobmaster-async worker``: runs jobs until stopped, optionally with a live view."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..app import JobMaster
from ..db.faults import database_fault
from ..events import Completed, Events, Failed, JobFinished, Retried
from ..inspection import TaskDepth
from .context import Settings, call, check_deployed, pass_settings
from .rendering import make_console
from .supervisor import READY_FD, SUPERVISOR_PID, Supervisor, child_arguments

__all__ = ("ConsoleHandler", "OutcomeCounter", "RecentRate", "progress_table", "worker")

#: Seconds over which the live view's rates are measured.
RATE_WINDOW = 10.0


@click.command()
@click.option("--app", "apps", multiple=True, required=True, help="Task module(s) to import: a.b[,c.d].")
@click.option("--concurrency", "-c", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--deploy/--no-deploy", default=False, help="Deploy the schema and these tasks first.")
@click.option("--grace-period", default=30.0, show_default=True, help="Seconds running jobs get on shutdown.")
@click.option(
    "--progress",
    is_flag=True,
    help="A live table of this worker's tasks (jobs waiting, running, done; rates over the last 10 s), logs above it.",
)
@click.option("--until-empty", is_flag=True, help="Stop once no job is waiting, blocked or running.")
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes, under a supervisor that restarts them (1: this process, no supervisor).",
)
@click.option("--poll-interval", default=5.0, show_default=True, help="Seconds between safety polls.")
@click.option("--heartbeat-interval", default=5.0, show_default=True, help="Seconds between heartbeats.")
@click.option(
    "--heartbeat-lapse", default=30.0, show_default=True, help="Seconds without heartbeat before jobs are rescued."
)
@click.option(
    "--connection-timeout",
    type=float,
    help="Deadline in seconds of each round trip to the database, and about how soon a vanished server is noticed "
    "[default: half the heartbeat lapse].",
)
@click.option(
    "--rescue-interval",
    type=float,
    help="Seconds between looks for jobs of workers whose heartbeat lapsed [default: half the heartbeat lapse].",
)
@click.option(
    "--prune-interval",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds between background prunings of finished jobs past their task's retention (one worker of a "
    "schema prunes at a time; 0: never).",
)
@click.option(
    "--wait-for-database",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0),
    envvar="JOBMASTER_WAIT_FOR_DATABASE",
    help="Seconds to wait at start for a read-write server (connections refused or unanswered, or only a "
    "standby: a failover) before exiting 1 [env: JOBMASTER_WAIT_FOR_DATABASE].",
)
@click.option(
    "--max-result-bytes",
    type=click.IntRange(min=4),
    help="A result whose JSON is longer fails its job for good, saying so [default: 4 MiB].",
)
@pass_settings
def worker(
    settings: Settings,
    apps: tuple[str, ...],
    concurrency: int,
    deploy: bool,
    grace_period: float,
    progress: bool,
    until_empty: bool,
    processes: int,
    poll_interval: float,
    heartbeat_interval: float,
    heartbeat_lapse: float,
    connection_timeout: float | None,
    rescue_interval: float | None,
    prune_interval: float,
    wait_for_database: float,
    max_result_bytes: int | None,
) -> None:
    """Run jobs of the given task modules until SIGTERM/SIGINT (graceful).

    --app takes module names as Python imports them; the current directory is importable, so
    --app billing finds ./billing.py.

    Exits 1 with one line when the database cannot be reached at start or the schema is not
    deployed. While no read-write server answers (refused or unanswered connections, or only a
    standby: a failover), it waits up to --wait-for-database seconds, then names each host and
    why it failed; once connected, the worker survives every database fault."""
    if settings.verbose == 0:
        logging.getLogger("jobmaster_async").setLevel(logging.INFO)
    if processes > 1:
        if deploy:
            call(settings, lambda jm: jm.deploy(), apps)
        supervisor = Supervisor(child_arguments(sys.argv[1:]), processes, restart=not until_empty)
        sys.exit(supervisor.run())
    console = make_console() if progress else None

    async def run(jm: JobMaster) -> None:
        await jm.connect()
        _tell_supervisor_connected()
        if deploy:
            await jm.deploy()
        else:
            await check_deployed(jm, f"{settings.deploy_hint(apps)}, or start the worker with --deploy")
        with _logs_above(console) if console is not None else contextlib.nullcontext():
            async with asyncio.TaskGroup() as group:
                worker_task = group.create_task(
                    jm.run_forever(concurrency, handle_signals=True, grace_period=grace_period)
                )
                if SUPERVISOR_PID in os.environ:
                    group.create_task(_stop_when_orphaned(jm, int(os.environ[SUPERVISOR_PID]), worker_task))
                if console is not None:
                    group.create_task(_show_progress(jm, worker_task, console, concurrency, until_empty))
                elif until_empty:
                    group.create_task(_stop_when_empty(jm, worker_task))

    options = {
        "poll_interval": poll_interval,
        "heartbeat_interval": heartbeat_interval,
        "heartbeat_lapse": heartbeat_lapse,
        "connection_timeout": connection_timeout,
        "rescue_interval": rescue_interval,
        "prune_interval": prune_interval,
        "wait_for_database": wait_for_database,
        "max_result_bytes": max_result_bytes,
    }
    call(settings, run, apps, **options)


# -- under a supervisor (--processes N) ------------------------------------------------------------


def _tell_supervisor_connected() -> None:
    """A child tells its supervisor it reached the database (its early deaths are counted)."""
    fd = os.environ.pop(READY_FD, None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.write(int(fd), b"1")
            os.close(int(fd))


async def _stop_when_orphaned(jm: JobMaster, supervisor: int, worker_task: asyncio.Task[None]) -> None:
    """A child whose supervisor died stops, as after SIGTERM."""
    while not worker_task.done():
        if os.getppid() != supervisor:
            logging.getLogger(__name__).warning("the supervisor (pid %d) is gone: stopping", supervisor)
            jm.request_stop(exiting=True)
            return
        await asyncio.sleep(1.0)


# -- logs above the live view ---------------------------------------------------------------------


class ConsoleHandler(logging.Handler):
    """Log records printed through a rich console: while a live view is shown on it, rich prints
    them above the view, which stays put."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        self.styles = {logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "bold red"}
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = Text(self.format(record), style=self.styles.get(record.levelno, ""))
            self.console.print(text, soft_wrap=True)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _logs_above(console: Console) -> Iterator[None]:
    """Log records printed through ``console`` (above the live view) instead of by the root
    logger's own stream handlers, which would write into the view."""
    root = logging.getLogger()
    streams = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    replaced = [h for h in root.handlers if type(h) is logging.StreamHandler and h.stream in streams]
    handler = ConsoleHandler(console)
    for old in replaced:
        root.removeHandler(old)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for old in replaced:
            root.addHandler(old)


# -- what the live view shows ---------------------------------------------------------------------


class RecentRate:
    """Events per second over the last ``window`` seconds (over the time since the first
    sample, while that is shorter), from samples of a running total."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, total: int) -> None:
        self._samples.append((now, total))
        # keep one sample at or before the start of the window, none older
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    def per_second(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (start, first), (end, last) = self._samples[0], self._samples[-1]
        return (last - first) / (end - start) if end > start else 0.0


class OutcomeCounter:
    """Counts this worker's finished jobs per task from its events (events.py: ``Completed``,
    ``Retried``, ``Failed``, each recorded outcome's)."""

    def __init__(self) -> None:
        self.done: Counter[str] = Counter()
        self.retried: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    def count(self, event: JobFinished) -> None:
        counter = {Completed: self.done, Retried: self.retried, Failed: self.failed}.get(type(event))
        if counter is not None:
            counter[event.task] += 1

    @contextlib.contextmanager
    def attached(self, events: Events) -> Iterator[OutcomeCounter]:
        unsubscribe = events.subscribe(JobFinished, self.count)
        try:
            yield self
        finally:
            unsubscribe()


@dataclass
class TaskRow:
    key: str
    waiting: int = 0
    blocked: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    rate: RecentRate = field(default_factory=RecentRate)


def progress_table(
    schema: str, rows: list[TaskRow], total: TaskRow, concurrency: int, max_rows: int | None = None
) -> Table:
    """The live view: a row per task this worker runs or that has active jobs, the busiest first,
    then all tasks. Waiting, blocked and running count every worker's jobs; done, failed (for
    good: an attempt a retry follows is neither) and finished/s (done or failed, per second)
    this worker's."""
    table = Table(
        title=f"schema {schema}: concurrency {concurrency}",
        caption=f"waiting, blocked, running: all workers · done, failed, finished/s (last {RATE_WINDOW:g} s): "
        "this worker",
    )
    table.add_column("task", no_wrap=True, overflow="ellipsis")
    for column in ("waiting", "blocked", "running", "done", "failed", "finished/s"):
        table.add_column(column, justify="right", no_wrap=True)
    ordered = sorted(rows, key=lambda r: (-r.running, -r.waiting, -r.rate.per_second(), -r.done, r.key))
    shown = ordered if max_rows is None or len(ordered) <= max_rows else ordered[: max(max_rows - 1, 1)]
    for row in shown:
        table.add_row(Text(row.key), *_figures(row))
    if len(shown) < len(ordered):
        table.add_row(Text(f"… {len(ordered) - len(shown)} more tasks", style="dim"))
    table.add_row(Text("all tasks", style="bold"), *_figures(total), end_section=True)
    return table


def _figures(row: TaskRow) -> list[str]:
    counts = (row.waiting, row.blocked, row.running, row.done, row.failed)
    return [f"{n:,}" for n in counts] + [f"{row.rate.per_second():,.1f}"]


@dataclass
class _View:
    schema: str
    concurrency: int
    counter: OutcomeCounter
    rows: dict[str, TaskRow] = field(default_factory=dict)
    total: TaskRow = field(default_factory=lambda: TaskRow("all tasks"))

    def update(self, activity: list[TaskDepth], now: float) -> None:
        by_key = {a.name: a for a in activity}
        for key in by_key.keys() | self.counter.done.keys() | self.counter.failed.keys() | self.rows.keys():
            row = self.rows.setdefault(key, TaskRow(key))
            found = by_key.get(key) or TaskDepth("", "")
            # waiting: due or scheduled for later
            row.waiting, row.blocked, row.running = found.waiting + found.scheduled, found.blocked, found.running
            row.done, row.failed = self.counter.done[key], self.counter.failed[key]
            row.rate.add(now, row.done + row.failed)
        self.total.waiting = sum(a.waiting + a.scheduled for a in activity)
        self.total.blocked = sum(a.blocked for a in activity)
        self.total.running = sum(a.running for a in activity)
        self.total.done, self.total.failed = sum(self.counter.done.values()), sum(self.counter.failed.values())
        self.total.rate.add(now, self.total.done + self.total.failed)

    def table(self, max_rows: int | None) -> Table:
        return progress_table(self.schema, list(self.rows.values()), self.total, self.concurrency, max_rows)


async def _show_progress(
    jm: JobMaster, worker_task: asyncio.Task[None], console: Console, concurrency: int, stop_when_empty: bool
) -> None:
    from rich.live import Live

    with OutcomeCounter().attached(jm.events) as counter:
        view = _View(jm.schema, concurrency, counter)
        with contextlib.suppress(Exception):  # the tasks this worker runs have a row from the start
            view.rows.update((key, TaskRow(key)) for key in await jm.worker_tasks())
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            stopping = False
            while True:
                ended = worker_task.done()  # then one last look, and the table stays as it ends
                try:
                    activity = await jm.queue_depth()
                except Exception as exc:
                    if not database_fault(exc):
                        raise
                    if ended:
                        break
                    await asyncio.sleep(1)  # the worker reports the outage; look again later
                    continue
                view.update(activity, time.monotonic())
                # room for the logs above: the table never takes more than the terminal's height
                live.update(view.table(max_rows=max(console.height - 10, 3) if console.is_terminal else None))
                if ended:
                    break
                if stop_when_empty and not stopping and not any(a.total for a in activity):
                    await jm.stop()
                    stopping = True
                await asyncio.sleep(0.1 if stopping else 0.5)
        if not console.is_terminal:
            console.line()  # rich ends the last render with a line break only on a terminal


async def _stop_when_empty(jm: JobMaster, worker_task: asyncio.Task[None]) -> None:
    while not worker_task.done():
        try:
            counts = await jm.active_counts()
        except Exception as exc:
            if not database_fault(exc):
                raise
            await asyncio.sleep(1)
            continue
        if sum(counts.values()) == 0:
            await jm.stop()
            return
        await asyncio.sleep(0.25)

"""The ``jobmaster-async`` command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from . import embedded
from .app import JobMaster
from .db.faults import database_fault
from .db.sql import Catalogue
from .errors import JobMasterError
from .jobs import Job, JobStatus

T = TypeVar("T")

console = Console()
logger = logging.getLogger("jobmaster_async.cli")


def _run(coro: Awaitable[T]) -> T:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


class Settings:
    def __init__(self, dsn: str | None, schema: str, verbose: int) -> None:
        self.dsn = dsn
        self.schema = schema
        self.verbose = verbose

    def resolve_dsn(self) -> str:
        if self.dsn:
            return self.dsn
        return embedded.embedded_dsn()

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """JobMaster errors and unreachable databases as a clean message and exit code 1."""
        try:
            yield
        except Exception as exc:
            error = _sole(exc)
            message = _one_line(error)
            if message is not None:
                raise message from error
            if error is not exc:
                raise error from None
            raise

    def master(self, apps: tuple[str, ...] = (), **options: Any) -> JobMaster:
        with self.errors():
            return JobMaster(self.resolve_dsn(), schema=self.schema, task_modules=_modules(apps), **options)


def _modules(apps: tuple[str, ...]) -> list[str]:
    return [name.strip() for app in apps for name in app.split(",") if name.strip()]


pass_settings = click.make_pass_decorator(Settings)


def _sole(exc: BaseException) -> BaseException:
    """The error inside groups of one (task groups wrap what they raise)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _one_line(exc: BaseException) -> click.ClickException | None:
    """What the user is told, in one line, of errors that are not bugs: JobMaster errors and
    database errors (None for the others, raised with their traceback)."""
    if isinstance(exc, JobMasterError):
        return click.ClickException(str(exc))
    if isinstance(exc, OSError):  # refused, DNS, TLS, timeouts
        return click.ClickException(f"cannot reach the database: {exc or type(exc).__name__}")
    import asyncpg
    from asyncpg.exceptions import InternalClientError

    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | InternalClientError):
        return click.ClickException(f"database error: {type(exc).__name__}: {exc}")
    return None


def _call(settings: Settings, fn: Callable[[JobMaster], Awaitable[T]], apps: tuple[str, ...] = (), **options: Any) -> T:
    async def main() -> T:
        async with settings.master(apps, **options) as jm:
            return await fn(jm)

    with settings.errors():
        return _run(main())


@click.group()
@click.option("--dsn", envvar="JOBMASTER_DSN", help="PostgreSQL DSN (else $JOBMASTER_DSN, else the embedded server).")
@click.option("--schema", envvar="JOBMASTER_SCHEMA", default="jobmaster", show_default=True, help="Schema name.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv: debug).")
@click.pass_context
def main(ctx: click.Context, dsn: str | None, schema: str, verbose: int) -> None:
    """jobmaster-async: an asyncio job queue on PostgreSQL."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Settings(dsn, schema, verbose)


# -- worker ----------------------------------------------------------------------------------------


@main.command()
@click.option("--app", "apps", multiple=True, required=True, help="Task module(s) to import: a.b[,c.d].")
@click.option("--concurrency", "-c", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--deploy/--no-deploy", default=False, help="Deploy the schema and these tasks first.")
@click.option("--grace-period", default=30.0, show_default=True, help="Seconds running jobs get on shutdown.")
@click.option("--progress", is_flag=True, help="A live view of job counts and throughput.")
@click.option("--until-empty", is_flag=True, help="Stop once no job is waiting, blocked or running.")
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
@pass_settings
def worker(
    settings: Settings,
    apps: tuple[str, ...],
    concurrency: int,
    deploy: bool,
    grace_period: float,
    progress: bool,
    until_empty: bool,
    poll_interval: float,
    heartbeat_interval: float,
    heartbeat_lapse: float,
    connection_timeout: float | None,
    rescue_interval: float | None,
) -> None:
    """Run jobs of the given task modules until SIGTERM/SIGINT (graceful).

    Exits 1 with one line when the database cannot be reached at start (a server that refuses
    connections is waited for 10 s); once connected, the worker survives every database fault."""
    if settings.verbose == 0:
        logging.getLogger("jobmaster_async").setLevel(logging.INFO)

    async def run(jm: JobMaster) -> None:
        await jm.connect()
        if deploy:
            await jm.deploy()
        async with asyncio.TaskGroup() as group:
            worker_task = group.create_task(jm.run_forever(concurrency, handle_signals=True, grace_period=grace_period))
            if progress or until_empty:
                group.create_task(_watch(jm, worker_task, show=progress, stop_when_empty=until_empty))

    options = {
        "poll_interval": poll_interval,
        "heartbeat_interval": heartbeat_interval,
        "heartbeat_lapse": heartbeat_lapse,
        "connection_timeout": connection_timeout,
        "rescue_interval": rescue_interval,
    }
    _call(settings, run, apps, **options)


async def _watch(jm: JobMaster, worker_task: asyncio.Task[None], *, show: bool, stop_when_empty: bool) -> None:
    from rich.live import Live

    started = time.monotonic()
    with Live(console=console, refresh_per_second=4, transient=False) if show else contextlib.nullcontext() as live:
        while not worker_task.done():
            try:
                counts = await (jm.counts() if show else jm.active_counts())
            except Exception as exc:
                if not database_fault(exc):
                    raise
                await asyncio.sleep(1)  # the worker reports the outage; look again later
                continue
            if live is not None:
                elapsed = max(time.monotonic() - started, 1e-9)
                table = Table(title=f"jobs in schema {jm.schema}")
                for status in JobStatus:
                    table.add_column(status.value, justify="right")
                table.add_column("finished/s here", justify="right")
                table.add_row(*(str(counts.get(s.value, 0)) for s in JobStatus), f"{jm.finished.count / elapsed:.1f}")
                live.update(table)
            active = sum(counts.get(s, 0) for s in ("waiting", "blocked", "running"))
            if stop_when_empty and active == 0:
                await jm.stop()
                return
            await asyncio.sleep(0.25)


# -- managing --------------------------------------------------------------------------------------


@main.command()
@click.option("--app", "apps", multiple=True, help="Task module(s) whose tasks to register.")
@click.option("--reset", is_flag=True, help="Drop the schema and every job first.")
@click.option("--prune", is_flag=True, help="Remove task definitions not registered by these modules.")
@pass_settings
def deploy(settings: Settings, apps: tuple[str, ...], reset: bool, prune: bool) -> None:
    """Create or migrate the schema and write task definitions."""
    if reset:
        click.confirm(f"Drop schema {settings.schema!r} and every job in it?", abort=True, default=False)

    async def run(jm: JobMaster) -> None:
        await jm.deploy(reset, prune=prune)

    _call(settings, run, apps)
    click.echo(f"deployed schema {settings.schema}")


@main.command()
@click.argument("type_key")
@click.argument("task_key")
@click.option("--priority", "-p", default=0, show_default=True)
@click.option("--args", "arguments", default="{}", show_default=True, help="Arguments as a JSON object.")
@pass_settings
def insert(settings: Settings, type_key: str, task_key: str, priority: int, arguments: str) -> None:
    """Insert a job; prints its id."""
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--args") from exc

    async def run(jm: JobMaster) -> uuid.UUID:
        return await jm.insert_job(type_key, task_key, priority, parsed)

    click.echo(str(_call(settings, run)))


@main.command(name="jobs")
@click.option("--status", type=click.Choice([s.value for s in JobStatus]))
@click.option("--type-key")
@click.option("--task-key")
@click.option("--limit", default=50, show_default=True)
@pass_settings
def list_jobs(settings: Settings, status: str | None, type_key: str | None, task_key: str | None, limit: int) -> None:
    """List jobs, newest first."""

    async def run(jm: JobMaster) -> list[Job]:
        return await jm.jobs(status, type_key, task_key, limit)

    console.print(jobs_table(_call(settings, run)))


def jobs_table(jobs: list[Job], title: str | None = None) -> Table:
    table = Table(title=title)
    for column in ("job id", "task", "status", "prio"):
        table.add_column(column, no_wrap=True)
    for column in ("arguments", "result / message"):
        table.add_column(column, overflow="fold")
    colours = {"complete": "green", "failed": "red", "cancelled": "yellow", "running": "cyan", "blocked": "magenta"}
    for job in jobs:
        outcome = json.dumps(job.result) if job.result is not None else (job.message or "")
        table.add_row(
            str(job.job_id)[:8],
            job.task_name,
            f"[{colours.get(job.status, 'white')}]{job.status}[/]",
            str(job.priority),
            json.dumps(job.arguments),
            outcome[:80],
        )
    return table


@main.command()
@click.argument("job_id")
@pass_settings
def show(settings: Settings, job_id: str) -> None:
    """Show one job: arguments, result or traceback, history, dependencies."""

    async def run(jm: JobMaster) -> tuple[Job | None, list[dict[str, Any]], list[dict[str, Any]]]:
        job = await jm.get_job(job_id)
        if job is None:
            return None, [], []
        return job, await jm.history(job_id), await jm.dependencies(job_id)

    with settings.errors():
        try:
            job, history, deps = _call(settings, run)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="JOB_ID") from exc
    if job is None:
        raise click.ClickException(f"no job {job_id}")
    console.print(f"[bold]{job.task_name}[/] {job.job_id}  status [bold]{job.status}[/]  priority {job.priority}")
    console.print(f"arguments: {json.dumps(job.arguments)}")
    console.print(f"attempts: {job.attempts} of {job.max_attempts}")
    if job.status == "complete":
        console.print(f"result: {json.dumps(job.result)}")
    if job.message:
        console.print(f"message: {job.message}")
    if job.traceback:
        console.print(job.traceback, markup=False, highlight=False)
    if deps:
        console.print("dependencies:")
        for dep in deps:
            console.print(f"  {dep['job_id']} {dep['type_key']}.{dep['task_key']} {dep['status']}")
    table = Table(title="history")
    for column in ("at", "status", "reason", "node", "pid", "message"):
        table.add_column(column)
    for event in history:
        table.add_row(
            str(event["at"]),
            event["status"],
            event["reason"] or "",
            event["node"] or "",
            str(event["pid"] or ""),
            event["message"] or "",
        )
    console.print(table)


@main.command()
@click.argument("job_id")
@pass_settings
def cancel(settings: Settings, job_id: str) -> None:
    """Cancel a waiting, blocked or running job."""

    async def run(jm: JobMaster) -> bool:
        return await jm.cancel(job_id)

    if _call(settings, run):
        click.echo(f"cancelled {job_id}")
    else:
        raise click.ClickException(f"job {job_id} had already finished")


@main.command()
@click.argument("job_id")
@pass_settings
def retry(settings: Settings, job_id: str) -> None:
    """Queue a failed or cancelled job again; prints the id that will run."""

    async def run(jm: JobMaster) -> uuid.UUID:
        return await jm.retry(job_id)

    click.echo(str(_call(settings, run)))


@main.command()
@pass_settings
def sql(settings: Settings) -> None:
    """Print the SQL interface for this schema, ready to copy into psql or an app."""
    click.echo(Catalogue(settings.schema).interface)


# -- the embedded database -------------------------------------------------------------------------


@main.group()
def db() -> None:
    """The embedded PostgreSQL (used when no DSN is given)."""


@db.command()
@pass_settings
def url(settings: Settings) -> None:
    """Print the DSN (starting the embedded server if needed), e.g. for psql."""
    with settings.errors():
        click.echo(settings.resolve_dsn())


@db.command()
@pass_settings
def stop(settings: Settings) -> None:
    """Stop the embedded server."""
    with settings.errors():
        stopped = embedded.stop_embedded()
    click.echo("stopped" if stopped else "not running")


# -- demo ------------------------------------------------------------------------------------------


@main.command()
@pass_settings
def demo(settings: Settings) -> None:
    """Deploy the original README's examples, insert jobs through SQL, and run them."""
    from .demo import run_demo

    with settings.errors():
        dsn = settings.resolve_dsn()
    schema = settings.schema if settings.schema != "jobmaster" else "jobmaster_demo"
    _run(run_demo(dsn, schema, console))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

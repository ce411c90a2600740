"""``jobmaster-async worker``: runs jobs until stopped, optionally with a live view."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import click

from ..app import JobMaster
from ..db.faults import database_fault
from .context import Settings, call, pass_settings
from .rendering import console, counts_table

__all__ = ("worker",)


@click.command()
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
    call(settings, run, apps, **options)


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
                live.update(counts_table(jm.schema, counts, jm.finished.count / elapsed))
            active = sum(counts.get(s, 0) for s in ("waiting", "blocked", "running"))
            if stop_when_empty and active == 0:
                await jm.stop()
                return
            await asyncio.sleep(0.25)

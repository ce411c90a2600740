"""Managing the queue: ``deploy``, ``insert``, ``jobs``, ``show``, ``cancel``, ``retry``, ``sql``."""

from __future__ import annotations

import json
import uuid
from typing import Any

import click

from ..app import JobMaster
from ..db.sql import Catalogue
from ..jobs import Job, JobStatus
from .context import Settings, call, pass_settings
from .rendering import console, jobs_table, print_job

__all__ = ("cancel", "deploy", "insert", "list_jobs", "retry", "show", "sql")


@click.command()
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

    call(settings, run, apps)
    click.echo(f"deployed schema {settings.schema}")


@click.command()
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

    click.echo(str(call(settings, run)))


@click.command(name="jobs")
@click.option("--status", type=click.Choice([s.value for s in JobStatus]))
@click.option("--type-key")
@click.option("--task-key")
@click.option("--limit", default=50, show_default=True)
@pass_settings
def list_jobs(settings: Settings, status: str | None, type_key: str | None, task_key: str | None, limit: int) -> None:
    """List jobs, newest first."""

    async def run(jm: JobMaster) -> list[Job]:
        return await jm.jobs(status, type_key, task_key, limit)

    console.print(jobs_table(call(settings, run)))


@click.command()
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
            job, history, deps = call(settings, run)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="JOB_ID") from exc
    if job is None:
        raise click.ClickException(f"no job {job_id}")
    print_job(job, history, deps)


@click.command()
@click.argument("job_id")
@pass_settings
def cancel(settings: Settings, job_id: str) -> None:
    """Cancel a waiting, blocked or running job."""

    async def run(jm: JobMaster) -> bool:
        return await jm.cancel(job_id)

    if call(settings, run):
        click.echo(f"cancelled {job_id}")
    else:
        raise click.ClickException(f"job {job_id} had already finished")


@click.command()
@click.argument("job_id")
@pass_settings
def retry(settings: Settings, job_id: str) -> None:
    """Queue a failed or cancelled job again; prints the id that will run."""

    async def run(jm: JobMaster) -> uuid.UUID:
        return await jm.retry(job_id)

    click.echo(str(call(settings, run)))


@click.command()
@pass_settings
def sql(settings: Settings) -> None:
    """Print the SQL interface for this schema, ready to copy into psql or an app."""
    click.echo(Catalogue(settings.schema).interface)

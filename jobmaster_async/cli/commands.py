"""Managing the queue: ``deploy``, ``insert``, ``jobs``, ``show``, ``cancel``, ``retry``,
``schedules``, ``sql``.

``show``, ``cancel`` and ``retry`` take a job's full id or any part of it that only that job has
(its first or last hex digits: ``jobs`` shows the last 12), by the rule of ``jobmaster_async.ids``."""

from __future__ import annotations

import difflib
import json
import re
import uuid
from datetime import datetime, timedelta
from typing import Any

import click

from ..app import JobMaster
from ..db.sql import Catalogue
from ..errors import TaskNotFound
from ..ids import resolve_job_id
from ..jobs import Job, JobStatus
from .context import Settings, call, pass_settings
from .rendering import job_json, jobs_table, jobs_tsv, make_console, print_job, schedules_table, to_json_line

__all__ = ("cancel", "deploy", "insert", "list_jobs", "retry", "schedules", "show", "sql")

#: How many task names a "did you mean" lists at most.
_LISTED = 20


@click.command()
@click.option("--app", "apps", multiple=True, help="Task module(s) whose tasks to register: a.b[,c.d].")
@click.option("--reset", is_flag=True, help="Drop the schema and every job first.")
@click.option("--prune", is_flag=True, help="Remove task definitions not registered by these modules.")
@pass_settings
def deploy(settings: Settings, apps: tuple[str, ...], reset: bool, prune: bool) -> None:
    """Create or migrate the schema and write task definitions.

    --app takes module names as Python imports them; the current directory is importable, so
    --app billing finds ./billing.py."""
    if reset:
        click.confirm(f"Drop schema {settings.schema!r} and every job in it?", abort=True, default=False)

    async def run(jm: JobMaster) -> None:
        await jm.deploy(reset, prune=prune)

    call(settings, run, apps)
    click.echo(f"deployed schema {settings.schema}")


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f", … ({len(names)} in all)" if len(names) > _LISTED else "")


def task_hint(type_key: str, task_key: str, deployed: list[tuple[str, str]], schema: str) -> str:
    """Why ``type_key.task_key`` is not found, and what is there: the task keys of that type
    ("did you mean …" for a near miss), else the type keys deployed."""
    if not deployed:
        return f"no task is deployed in schema {schema!r}: deploy your task modules first (deploy --app …)"
    wanted = f"unknown task {type_key}.{task_key}"
    keys = [task for type_, task in deployed if type_ == type_key]
    if keys:
        close = difflib.get_close_matches(task_key, keys, n=3, cutoff=0.6)
        guess = f"did you mean {' or '.join(close)}? " if close else ""
        return f"{wanted}: {guess}tasks of {type_key}: {_listing(keys)}"
    types = sorted({type_ for type_, _ in deployed})
    close = difflib.get_close_matches(type_key, types, n=3, cutoff=0.6)
    guess = f"did you mean {' or '.join(f'{c}.{task_key}' for c in close)}? " if close else ""
    return f"{wanted}: no task of type {type_key} is deployed; {guess}types deployed: {_listing(types)}"


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str, option: str = "--in") -> timedelta:
    """``90s``, ``10m``, ``1h30m``, ``2d``, ``1w`` (a number alone: seconds)."""
    text = text.strip().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return timedelta(seconds=float(text))
    if not text or not re.fullmatch(f"(?:{_DURATION.pattern})+", text):
        raise click.BadParameter(f"{text!r} is not a duration such as 90s, 10m, 1h30m, 2d", param_hint=option)
    return sum((timedelta(**{_UNITS[unit]: float(n)}) for n, unit in _DURATION.findall(text)), timedelta())


def parse_time(text: str) -> datetime:
    """An ISO 8601 time with its offset (``2027-01-04T06:00+01:00``, ``…Z``)."""
    try:
        when = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time: {exc}", param_hint="--run-at") from exc
    if when.tzinfo is None:
        raise click.BadParameter(
            f"{text!r} has no offset: which zone it meant cannot be known (say 2027-01-04T06:00+01:00, "
            "or …Z for UTC; or use --in)",
            param_hint="--run-at",
        )
    return when


@click.command()
@click.argument("type_key")
@click.argument("task_key")
@click.option("--priority", "-p", default=0, show_default=True)
@click.option("--args", "arguments", default="{}", show_default=True, help="Arguments as a JSON object.")
@click.option("--run-at", "run_at", help="Not before this time: ISO 8601 with an offset (2027-01-04T06:00+01:00).")
@click.option("--in", "run_in", help="Not before this long from now (the database's clock): 90s, 10m, 1h30m, 2d.")
@pass_settings
def insert(
    settings: Settings,
    type_key: str,
    task_key: str,
    priority: int,
    arguments: str,
    run_at: str | None,
    run_in: str | None,
) -> None:
    """Insert a job; prints its id."""
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--args") from exc
    if run_at is not None and run_in is not None:
        raise click.UsageError("give --run-at or --in, not both")
    when = parse_time(run_at) if run_at is not None else parse_duration(run_in) if run_in is not None else None

    async def run(jm: JobMaster) -> uuid.UUID:
        try:
            return await jm.insert_job(type_key, task_key, priority, parsed, run_at=when)
        except TaskNotFound as exc:
            deployed = [(task["type_key"], task["task_key"]) for task in await jm.deployed_tasks()]
            hint = task_hint(type_key, task_key, deployed, jm.schema)
            raise click.ClickException(hint) from exc

    click.echo(str(call(settings, run)))


@click.command(name="jobs")
@click.option("--status", type=click.Choice([s.value for s in JobStatus]))
@click.option("--type-key")
@click.option("--task-key")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job and line, every field in full.")
@pass_settings
def list_jobs(
    settings: Settings, status: str | None, type_key: str | None, task_key: str | None, limit: int, as_json: bool
) -> None:
    """List jobs, newest first.

    In a terminal: a table, long cells cut with "…", and the last 12 hex digits of each id
    (show, cancel and retry take them). Piped: tab-separated lines, a header first, full ids and
    values (a cell past 10,000 characters cut with "…"). --json: one JSON object per line, never
    cut."""

    async def run(jm: JobMaster) -> list[Job]:
        return await jm.jobs(status, type_key, task_key, limit)

    jobs = call(settings, run)
    if as_json:
        for job in jobs:
            click.echo(to_json_line(job_json(job)))
        return
    console = make_console()
    if console.is_terminal:
        console.print(jobs_table(jobs, width=console.width))
    else:
        for line in jobs_tsv(jobs):
            click.echo(line)


_JOB_ID_HELP = "JOB_ID: the full id, or its first or last hex digits (any part only one job has)."


@click.command(epilog=_JOB_ID_HELP)
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the job, its history and dependencies.")
@pass_settings
def show(settings: Settings, job_id: str, as_json: bool) -> None:
    """Show one job: arguments, result or traceback, history, dependencies."""

    async def run(jm: JobMaster) -> tuple[Job, list[dict[str, Any]], list[dict[str, Any]]]:
        found = await resolve_job_id(jm, job_id)
        job = await jm.get_job(found)
        if job is None:
            raise click.ClickException(f"no job {found}")
        return job, await jm.history(found), await jm.dependencies(found)

    job, history, deps = call(settings, run)
    if as_json:
        click.echo(to_json_line({**job_json(job), "history": history, "dependencies": deps}))
    else:
        print_job(make_console(), job, history, deps)


@click.command(epilog=_JOB_ID_HELP)
@click.argument("job_id")
@pass_settings
def cancel(settings: Settings, job_id: str) -> None:
    """Cancel a waiting, blocked or running job; prints "cancelled <id>"."""

    async def run(jm: JobMaster) -> tuple[uuid.UUID, str | None]:
        found = await resolve_job_id(jm, job_id)
        if await jm.cancel(found):
            return found, None
        job = await jm.get_job(found)
        return found, job.status if job is not None else None

    found, finished = call(settings, run)
    if finished is None:
        click.echo(f"cancelled {found}")
    elif finished == JobStatus.CANCELLED:
        raise click.ClickException(f"job {found} is already cancelled")
    else:
        raise click.ClickException(f"job {found} had already {'completed' if finished == 'complete' else finished}")


@click.command(epilog=_JOB_ID_HELP)
@click.argument("job_id")
@pass_settings
def retry(settings: Settings, job_id: str) -> None:
    """Queue a failed or cancelled job again; prints "queued again <id>"."""

    async def run(jm: JobMaster) -> tuple[uuid.UUID, uuid.UUID]:
        found = await resolve_job_id(jm, job_id)
        return found, await jm.retry(found)

    found, queued = call(settings, run)
    if queued == found:
        click.echo(f"queued again {found}")
    else:
        click.echo(f"not queued again: the identical job {queued} is already waiting, blocked or running")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per schedule and line, every field in full.")
@pass_settings
def schedules(settings: Settings, as_json: bool) -> None:
    """List the periodic tasks' schedules as deployed: next tick, last tick, its job and status."""

    async def run(jm: JobMaster) -> list[dict[str, Any]]:
        return await jm.schedules()

    found = call(settings, run)
    if as_json:
        for schedule in found:
            click.echo(to_json_line(schedule))
        return
    if not found:
        click.echo("no schedules deployed (@task(cron=...), then deploy)")
        return
    console = make_console()
    console.print(schedules_table(found, width=console.width))


@click.command()
@click.option(
    "--older-than",
    metavar="AGE",
    help="Prune every task's finished jobs older than AGE (90s, 10m, 1h30m, 2d, 1w) instead of each task's retention.",
)
@click.option("--dry-run", is_flag=True, help="Delete nothing: print how many jobs would go.")
@pass_settings
def prune(settings: Settings, older_than: str | None, dry_run: bool) -> None:
    """Delete finished jobs older than their task's retention (7 days unless set), with their
    history, in short transactions. Jobs a dependency may still need are kept."""
    age = parse_duration(older_than, "--older-than") if older_than is not None else None
    if age is not None and age <= timedelta(0):
        raise click.BadParameter("must be longer than 0", param_hint="--older-than")

    async def run(jm: JobMaster) -> int:
        return await jm.prune(age, dry_run=dry_run)

    count = call(settings, run)
    click.echo(f"would prune {count} jobs (dry run: nothing deleted)" if dry_run else f"pruned {count} jobs")


@click.command()
@pass_settings
def sql(settings: Settings) -> None:
    """Print the SQL interface for this schema, ready to copy into psql or an app."""
    click.echo(Catalogue(settings.schema).interface)

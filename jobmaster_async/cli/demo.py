"""``jobmaster-async demo``: the original README's examples, inserted through SQL and run."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import asyncpg
import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from ..app import JobMaster
from ..db.sql import quote_identifier
from .context import Settings, pass_settings, run
from .rendering import jobs_table, make_console

__all__ = ("demo", "run_demo")

EXAMPLES = ["jobmaster_async.examples.my_tasks", "jobmaster_async.examples.nice_tasks"]


@click.command()
@pass_settings
def demo(settings: Settings) -> None:
    """Deploy the original README's examples, insert jobs through SQL, and run them."""
    schema = settings.schema if settings.schema != "jobmaster" else "jobmaster_demo"
    with settings.errors():
        run(run_demo(settings.resolve_dsn(), schema, make_console()))


async def run_demo(dsn: str, schema: str, console: Console) -> list[str]:
    """Runs the demo in a temporary folder (removed at the end); returns the job statuses at
    the end (for tests)."""
    folder = Path(tempfile.mkdtemp(prefix="jobmaster-demo-"))
    try:
        return await _demo(dsn, schema, console, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _demo(dsn: str, schema: str, console: Console, folder: Path) -> list[str]:
    s = quote_identifier(schema)
    f, g = folder / "f.txt", folder / "g.txt"
    statements = [
        (
            "the seed's task1: writes 1 + 2 to a file",
            "my_tasks",
            "task1",
            10,
            {"file_path": str(folder / "sum.txt"), "a": 1, "b": 2},
        ),
        (
            "bar(F, 5): depends on foo(F), which is created first (priority 6)",
            "nice_tasks",
            "bar",
            5,
            {"file_path": str(f), "number": 5},
        ),
        ("baz(F): waits for that bar, creates foo(F, number=10)", "nice_tasks", "baz", 1, {"file_path": str(f)}),
        (
            "baz(G): no bar for G and bar's number is unknown: inserted as failed",
            "nice_tasks",
            "baz",
            1,
            {"file_path": str(g)},
        ),
        (
            "a bad insert: letter must be A, B or C",
            "nice_tasks",
            "bar",
            1,
            {"file_path": str(f), "number": 1, "letter": "Z"},
        ),
    ]
    async with JobMaster(dsn, schema=schema, task_modules=EXAMPLES) as jm:
        console.print(f"[bold]1. deploy[/] schema {schema} (reset) with the tasks of {', '.join(EXAMPLES)}")
        await jm.deploy(_reset=True)
        console.print("[bold]2. insert jobs through SQL[/], as psql or a web app would")
        async with jm.connection() as conn:
            for comment, type_key, task_key, priority, arguments in statements:
                sql = f"CALL {s}.insert_job('{type_key}', '{task_key}', {priority}, '{json.dumps(arguments)}'::json)"
                console.print(f"  [dim]-- {comment}[/]\n  {sql}", highlight=False)
                try:
                    row = await conn.fetchrow(
                        f"CALL {s}.insert_job($1, $2, $3, $4::json)",
                        type_key,
                        task_key,
                        priority,
                        json.dumps(arguments),
                    )
                    console.print(f"  [green]-> job_id {row['job_id'] if row else '?'}[/]")
                except asyncpg.PostgresError as exc:
                    console.print(f"  [red]-> ERROR {exc.sqlstate}: {exc}[/]")
        console.print(jobs_table(await jm.jobs(), title="before running", width=console.width))
        console.print("[bold]3. run a worker until the queue is empty[/]")
        await _run_until_empty(jm, console)
        jobs = await jm.jobs()
        console.print(jobs_table(jobs, title="after running", width=console.width))
        console.print(f"{f.name} holds {f.read_text()!r}; sum.txt holds {(folder / 'sum.txt').read_text()!r}")
        view = f"{quote_identifier(schema)}.job_list"
        console.print(f"Look around with: jobmaster-async --schema {schema} jobs, or", style="dim")
        console.print(f"psql \"$(jobmaster-async db url)\" -c 'TABLE {view}'", style="dim", highlight=False)
        return [job.status for job in jobs]


async def _run_until_empty(jm: JobMaster, console: Console) -> None:
    """One job at a time, each outcome recorded before the next claim (the seed's tasks all write
    the same file, so they are not safe side by side): exactly the original's order."""
    total = len(await jm.jobs(status="waiting")) + len(await jm.jobs(status="blocked"))
    with Progress(TextColumn("jobs"), BarColumn(), MofNCompleteColumn(), console=console) as progress:
        bar = progress.add_task("jobs", total=total)
        while (job := await jm.pop_job()) is not None:
            await job.execute()
            progress.advance(bar)
            console.print(f"  ran {job.task_name} {json.dumps(job.arguments)}: {job.status}", highlight=False)

"""What the commands print: tables of jobs and counts, one job in full."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from ..jobs import Job, JobStatus

__all__ = ("console", "counts_table", "jobs_table", "print_job")

console = Console()

_COLOURS = {"complete": "green", "failed": "red", "cancelled": "yellow", "running": "cyan", "blocked": "magenta"}


def jobs_table(jobs: list[Job], title: str | None = None) -> Table:
    table = Table(title=title)
    for column in ("job id", "task", "status", "prio"):
        table.add_column(column, no_wrap=True)
    for column in ("arguments", "result / message"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        outcome = json.dumps(job.result) if job.result is not None else (job.message or "")
        table.add_row(
            str(job.job_id)[:8],
            job.task_name,
            f"[{_COLOURS.get(job.status, 'white')}]{job.status}[/]",
            str(job.priority),
            json.dumps(job.arguments),
            outcome[:80],
        )
    return table


def counts_table(schema: str, counts: Mapping[str, int], finished_per_second: float) -> Table:
    """The live view of ``worker --progress``: jobs by status, and this worker's throughput."""
    table = Table(title=f"jobs in schema {schema}")
    for status in JobStatus:
        table.add_column(status.value, justify="right")
    table.add_column("finished/s here", justify="right")
    table.add_row(*(str(counts.get(s.value, 0)) for s in JobStatus), f"{finished_per_second:.1f}")
    return table


def print_job(job: Job, history: list[dict[str, Any]], dependencies: list[dict[str, Any]]) -> None:
    """``show``: arguments, result or traceback, dependencies, history."""
    console.print(f"[bold]{job.task_name}[/] {job.job_id}  status [bold]{job.status}[/]  priority {job.priority}")
    console.print(f"arguments: {json.dumps(job.arguments)}")
    console.print(f"attempts: {job.attempts} of {job.max_attempts}")
    if job.status == "complete":
        console.print(f"result: {json.dumps(job.result)}")
    if job.message:
        console.print(f"message: {job.message}")
    if job.traceback:
        console.print(job.traceback, markup=False, highlight=False)
    if dependencies:
        console.print("dependencies:")
        for dep in dependencies:
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

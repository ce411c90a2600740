"""What the commands print: for people, tables that fit the terminal, long cells cut with "…";
for pipes (stdout not a terminal), lines never wrapped nor cut (``jobs``: tab-separated values);
with ``--json``, one JSON object per line, never cut."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..ids import short_id
from ..jobs import Job
from ..times import UndecodableTime

__all__ = (
    "CELL_LIMIT",
    "cut",
    "job_json",
    "jobs_table",
    "jobs_tsv",
    "make_console",
    "print_job",
    "schedules_table",
    "to_json_line",
)

#: The width of a console that is not a terminal: lines are never wrapped.
PIPE_WIDTH = 100_000

#: At most this many characters of a text in a table cell, even on a wide console.
CELL_LIMIT = 300

_COLOURS = {"complete": "green", "failed": "red", "cancelled": "yellow", "running": "cyan", "blocked": "magenta"}


def make_console() -> Console:
    """A console on stdout as it is now: a terminal's own width, else one wide enough that no
    line is wrapped (``… | grep`` sees each row on one line)."""
    console = Console()
    if console.is_terminal:
        return console
    return Console(width=PIPE_WIDTH, soft_wrap=True)


def cut(text: str, width: int = CELL_LIMIT) -> str:
    """The first line of ``text`` in at most ``width`` cells, ending with "…" when anything was
    left out (a further line, or the rest of a long one)."""
    width = max(width, 1)
    first, newline, _ = text.partition("\n")
    first = first.rstrip("\r")
    if not newline and cell_len(first) <= width:
        return first
    kept, used = [], 0
    for char in first:
        size = cell_len(char)
        if used + size > width - 1:
            break
        kept.append(char)
        used += size
    return "".join(kept) + "…"


def _outcome(job: Job) -> str:
    """The result as JSON, else the message (after the exception's type, if any)."""
    if job.result is not None:
        return json.dumps(job.result, ensure_ascii=False)
    if job.error_type:
        return f"{job.error_type}: {job.message or ''}"
    return job.message or ""


def _status(status: str, later: str = "") -> str:
    return f"[{_COLOURS.get(status, 'white')}]{status}[/]{later}"


def _when(at: datetime | None) -> str:
    """A time as listings show it: UTC, to the second; one a datetime cannot hold as PostgreSQL
    wrote it (times.UndecodableTime)."""
    if isinstance(at, UndecodableTime):
        return at.raw
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if at is not None else ""


def _later(job: Job, now: datetime) -> str:
    """ " until <run_at>" for a waiting or blocked job whose run_at is still ahead."""
    if job.run_at is not None and job.run_at > now and job.status in ("waiting", "blocked"):
        return f" until {_when(job.run_at)}"
    return ""


_HEADS = ("job id (end)", "task", "status", "prio", "arguments", "outcome")


def jobs_table(jobs: Sequence[Job], title: str | None = None, width: int | None = None) -> Table:
    """Jobs, one per row: the end of the id (what ``show``, ``cancel`` and ``retry`` take), task,
    status, priority, arguments, and the result or message; within ``width``, the task, arguments
    and outcome cut with "…" where they do not fit (the id, status and priority never)."""
    now = datetime.now(UTC)
    cells = [
        (
            short_id(job.job_id),
            job.task_name,
            job.status + _later(job, now),
            str(job.priority),
            json.dumps(job.arguments, ensure_ascii=False),
            _outcome(job),
        )
        for job in jobs
    ]
    longest = [
        max([cell_len(head), *(cell_len(row[i].partition("\n")[0]) for row in cells)]) for i, head in enumerate(_HEADS)
    ]
    # each column takes 2 of padding and 1 of border, plus the last border
    room = (width or PIPE_WIDTH) - 3 * len(_HEADS) - 1 - longest[0] - longest[2] - longest[3]
    task = min(longest[1], max(room // 2, 12))
    room -= task
    arguments = min(longest[4], CELL_LIMIT, max(room * 2 // 5, len(_HEADS[4])))
    outcome = min(longest[5], CELL_LIMIT, max(room - arguments, len(_HEADS[5])))
    widths = [longest[0], task, longest[2], longest[3], arguments, outcome]
    fits = room >= arguments + outcome
    table = Table(title=title)
    for head, size in zip(_HEADS, widths, strict=True):
        table.add_column(head, no_wrap=True, min_width=size if fits else None)
    for job_id, task_name, status, priority, args, outcome_text in cells:
        # data as Text: a "[" in it is never read as markup
        status, _, later = status.partition(" ")
        table.add_row(
            job_id,
            Text(cut(task_name, widths[1])),
            _status(status, f" {later}" if later else ""),
            priority,
            Text(cut(args, widths[4])),
            Text(cut(outcome_text, widths[5])),
        )
    return table


#: characters of a tab-separated cell at most (a 5 MB argument is for --json, not for a pipe)
TSV_CELL_LIMIT = 10_000


def _tsv_cell(text: str) -> str:
    if len(text) > TSV_CELL_LIMIT:
        text = text[: TSV_CELL_LIMIT - 1] + "…"
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def jobs_tsv(jobs: Iterable[Job]) -> Iterable[str]:
    """Jobs as tab-separated lines (a header first) for pipes: the full id and every value in
    full up to 10,000 characters (longer ones cut with "…"; ``--json`` never cuts), tabs,
    newlines and backslashes escaped as ``\\t``, ``\\n`` and ``\\\\``."""
    yield "job_id\ttask\tstatus\tpriority\tcreated_at\targuments\tresult_or_message\trun_at"
    for job in jobs:
        created = job.created_at.isoformat() if job.created_at else ""
        cells = [str(job.job_id), job.task_name, job.status, str(job.priority), created]
        cells += [json.dumps(job.arguments, ensure_ascii=False), _outcome(job)]
        cells.append(job.run_at.isoformat() if job.run_at else "")
        yield "\t".join(_tsv_cell(cell) for cell in cells)


def _plain(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def to_json_line(value: Any) -> str:
    """One line of JSON (ids and times as strings)."""
    return json.dumps(value, default=_plain, ensure_ascii=False)


def job_json(job: Job) -> dict[str, Any]:
    """Every field of a job, for ``--json``."""
    return {field.name: getattr(job, field.name) for field in dataclasses.fields(Job)}


_SCHEDULE_HEADS = ("task", "cron", "arguments", "prio", "next tick", "last tick", "last job")


def schedules_table(schedules: Sequence[Mapping[str, Any]], width: int | None = None) -> Table:
    """``schedules``: one row each, times in UTC; the arguments cut with "…" to fit ``width``."""
    rows = []
    for s in schedules:
        zone = "" if s["timezone"] == "UTC" else f" ({s['timezone']})"
        last_job = f"{short_id(s['last_job_id'])} {s['last_job_status'] or 'gone'}" if s["last_job_id"] else ""
        rows.append(
            (
                f"{s['type_key']}.{s['task_key']}",
                s["expression"] + zone,
                json.dumps(s["arguments"], ensure_ascii=False),
                str(s["priority"]),
                _when(s["next_tick"]),
                _when(s["last_tick"]),
                last_job,
            )
        )
    longest = [max([cell_len(h), *(cell_len(r[i]) for r in rows)]) for i, h in enumerate(_SCHEDULE_HEADS)]
    room = (width or PIPE_WIDTH) - 3 * len(_SCHEDULE_HEADS) - 1 - sum(longest) + longest[2]
    arguments = max(min(longest[2], CELL_LIMIT, room), len(_SCHEDULE_HEADS[2]))
    table = Table()
    for head in _SCHEDULE_HEADS:
        table.add_column(head, no_wrap=True)
    for row in rows:
        table.add_row(*(Text(cut(cell, arguments) if i == 2 else cell) for i, cell in enumerate(row)))
    return table


def print_job(
    console: Console, job: Job, history: list[dict[str, Any]], dependencies: Sequence[Mapping[str, Any]]
) -> None:
    """``show``: arguments, result or traceback, dependencies, history."""
    colour = _COLOURS.get(job.status, "")
    title = Text.assemble((job.task_name, "bold"), f" {job.job_id}  status ", (job.status, colour))
    title.append(f"  priority {job.priority}")
    console.print(title, highlight=False)
    console.print(f"arguments: {json.dumps(job.arguments, ensure_ascii=False)}", markup=False)
    console.print(f"attempts: {job.attempts} of {job.max_attempts}; rescues: {job.rescues}")
    times = (
        ("created", job.created_at),
        ("run at", job.run_at),
        ("started", job.started_at),
        ("finished", job.finished_at),
    )
    for label, at in times:
        if at is not None:
            console.print(f"{label}: {at}", highlight=False)
    if job.status == "complete":
        console.print(f"result: {json.dumps(job.result, ensure_ascii=False)}", markup=False)
    if job.error_type:
        console.print(f"error: {job.error_type}: {job.message or ''}", markup=False, highlight=False)
    elif job.message:
        console.print(f"message: {job.message}", markup=False, highlight=False)
    if job.traceback:
        console.print(job.traceback, markup=False, highlight=False)
    if dependencies:
        console.print("dependencies:")
        for dep in dependencies:
            line = f"  {dep['job_id']} {dep['type_key']}.{dep['task_key']} {dep['status']}"
            console.print(line, markup=False, highlight=False)
    heads = ("at", "status", "reason", "node", "pid")
    rows = [
        (str(e["at"]), e["status"], e["reason"] or "", e["node"] or "", str(e["pid"] or ""), e["message"] or "")
        for e in history
    ]
    fixed = [max([cell_len(head), *(cell_len(row[i]) for row in rows)]) for i, head in enumerate(heads)]
    budget = console.width - sum(fixed) - 3 * (len(heads) + 1) - 1
    width = max(min(budget, CELL_LIMIT), len("message"))
    table = Table(title="history")
    for head, size in zip(heads, fixed, strict=True):
        table.add_column(head, no_wrap=True, min_width=size if budget >= width else None)
    table.add_column("message", no_wrap=True)
    for *cells, message in rows:
        table.add_row(*(Text(cell) for cell in cells), Text(cut(message, width)))
    console.print(table)

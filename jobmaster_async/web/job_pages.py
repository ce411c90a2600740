"""The dashboard's job pages: the list (filters, search, keyset pages) and one job's page (its
arguments, outcome, history and dependency trees). A part of ``Pages`` (web/pages.py), which
renders them."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..errors import InvalidJobId, JobNotFound
from ..ids import AmbiguousJobId, resolve_job_id
from ..jobs import ACTIVE_STATUSES, JobStatus
from .live import Broadcaster, Snapshot
from .present import ago

if TYPE_CHECKING:
    from ..app import JobMaster

__all__ = ("JobPages", "TreeNode")

#: Jobs on a page of the list; index entries a filtered page looks at, at most; characters of
#: arguments and messages the list shows.
PAGE = 50
SCAN = 20_000
CUT = 160
#: The scan bound of a text search, which reads each job's arguments as text.
TEXT_SCAN = 5_000
#: How far the job page follows dependencies each way (levels, jobs).
TREE_DEPTH = 8
TREE_ROWS = 300
_ID_LIKE = re.compile(r"[0-9a-fA-F-]{12,36}")
#: The statuses the list filters on.
LIST_STATUSES = tuple(status.value for status in JobStatus)
_NOTICES = {
    "cancelled": "Cancelled.",
    "finished": "Not cancelled: the job had already finished.",
    "retried": "Queued again.",
}


@dataclass
class TreeNode:
    """A job in a dependency tree."""

    job_id: uuid.UUID
    name: str
    status: str
    arguments: str
    children: list[TreeNode] = field(default_factory=list)


def _tree(root: uuid.UUID, rows: list[Mapping[str, Any]], parent_key: str) -> list[TreeNode]:
    """The tree below ``root``: each row is an edge from ``row[parent_key]`` to ``row["job_id"]``."""
    edges: dict[uuid.UUID, dict[uuid.UUID, Mapping[str, Any]]] = {}
    for row in rows:
        edges.setdefault(row[parent_key], {})[row["job_id"]] = row

    def build(job_id: uuid.UUID, path: frozenset[uuid.UUID]) -> list[TreeNode]:
        nodes = []
        for child, row in sorted(edges.get(job_id, {}).items(), key=lambda kv: str(kv[0])):
            node = TreeNode(child, f"{row['type_key']}.{row['task_key']}", row["status"], json.dumps(row["arguments"]))
            if child not in path:
                node.children = build(child, path | {child})
            nodes.append(node)
        return nodes

    return build(root, frozenset({root}))


class JobPages:
    """The job list and the job page, for ``Pages``, which provides rendering."""

    jm: JobMaster
    broadcaster: Broadcaster

    @staticmethod
    def base(request: Request) -> str:
        raise NotImplementedError

    def render(self, request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        raise NotImplementedError

    def problem(self, request: Request, status: int, title: str, message: str) -> Response:
        raise NotImplementedError

    def regions(self, snapshot: Snapshot, base: str) -> dict[str, str]:
        raise NotImplementedError

    async def jobs(self, request: Request) -> Response:
        query = request.query_params
        status = query.get("status") or None
        task = query.get("task") or None
        text = (query.get("q") or "").strip()[:200] or None
        before_text = query.get("before") or None
        if status is not None and status not in LIST_STATUSES:
            message = f"{status!r} is not one of {', '.join(LIST_STATUSES)}"
            return self.problem(request, 400, "Unknown status", message)
        try:
            before = uuid.UUID(before_text) if before_text else None
        except ValueError:
            return self.problem(request, 400, "Bad page", "before= takes a job id")
        if text and _ID_LIKE.fullmatch(text) and before is None:
            found = await self._find(text)
            if found is not None:
                return RedirectResponse(f"{self.base(request)}/jobs/{found}", 302)
        tasks = await self.jm.deployed_tasks()
        task_id = None
        if task is not None:
            task_id = next((row["task_id"] for row in tasks if f"{row['type_key']}.{row['task_key']}" == task), -1)
        pattern = None if text is None else "%" + re.sub(r"([\\%_])", r"\\\1", text) + "%"
        scan = SCAN if pattern is None else min(SCAN, TEXT_SCAN)
        rows = await self.jm.jobs_page(
            before=before, status=status, task_id=task_id, pattern=pattern, limit=PAGE + 1, scan=scan, cut=CUT
        )
        older, searched_to = None, None
        filtered = status is not None or task_id is not None or pattern is not None
        if len(rows) > PAGE:
            rows = rows[:PAGE]
            older = rows[-1]["job_id"]
        elif filtered and status not in ACTIVE_STATUSES:
            end = await self.jm.scan_end(before, scan)
            if end.more:
                older = searched_to = end.last_id
        now = await self.jm.clock()
        params = {k: v for k, v in (("status", status), ("task", task), ("q", text)) if v}
        context = {
            "page": "jobs",
            "rows": rows,
            "tasks": [f"{row['type_key']}.{row['task_key']}" for row in tasks],
            "list_statuses": LIST_STATUSES,
            "status": status,
            "task": task,
            "q": text or "",
            "older": f"?{urlencode({**params, 'before': str(older)})}" if older else None,
            "newest": f"?{urlencode(params)}" if before is not None else None,
            "searched_to": searched_to,
            "scan": scan,
            "now": now,
            "ago": ago,
            "first_page": before is None,
            "cut": CUT,
        }
        return self.render(request, "jobs.html", context)

    async def _find(self, text: str) -> uuid.UUID | None:
        """The one job an id-like search names, if it names exactly one."""
        try:
            job_id = await resolve_job_id(self.jm, text)
        except (InvalidJobId, JobNotFound, AmbiguousJobId):
            return None
        return job_id if await self.jm.get_job(job_id) is not None else None

    async def job(self, request: Request) -> Response:
        text: str = request.path_params["job_id"]
        base = self.base(request)
        try:
            job_id = await resolve_job_id(self.jm, text)
        except InvalidJobId as exc:
            return self.problem(request, 404, "Not a job id", str(exc))
        except JobNotFound as exc:
            return self.problem(request, 404, "No such job", str(exc))
        except AmbiguousJobId as exc:
            choices = {"page": "ambiguous", "text": exc.text, "candidates": exc.candidates}
            return self.render(request, "ambiguous.html", choices, 300)
        if text != str(job_id):  # a part of the id, or another spelling of it
            query = f"?{request.url.query}" if request.url.query else ""
            return RedirectResponse(f"{base}/jobs/{job_id}{query}", 302)
        job = await self.jm.get_job(job_id)
        if job is None:
            return self.problem(request, 404, "No such job", f"no job {job_id}")
        history = await self.jm.history(job_id)
        up, down = await self.jm.dependency_tree(job_id, TREE_DEPTH, TREE_ROWS)
        worker = await self.jm.job_worker(job_id, job.worker_id) if job.worker_id else None
        now = await self.jm.clock()
        done = request.query_params.get("done")
        notice = _NOTICES.get(done or "")
        twin = request.query_params.get("twin")
        if done == "twin" and twin:
            try:
                notice = f"Not queued again: the identical job {uuid.UUID(twin)} is already active."
            except ValueError:
                notice = None
        context: dict[str, Any] = {
            "page": "job",
            "job": job,
            "history": history,
            "up": _tree(job_id, [dict(r) for r in up], "dependent"),
            "down": _tree(job_id, [dict(r) for r in down], "depends_on"),
            "tree_full": len(up) >= TREE_ROWS or len(down) >= TREE_ROWS,
            "worker": worker,
            "now": now,
            "ago": ago,
            "notice": notice,
            "twin": twin if done == "twin" else None,
            "can_cancel": job.status in ACTIVE_STATUSES,
            "can_retry": job.status in ("failed", "cancelled"),
            "run_seconds": (job.finished_at - job.started_at).total_seconds()
            if job.finished_at and job.started_at
            else None,
        }
        return self.render(request, "job.html", context)

    # -- actions ---------------------------------------------------------------------------------

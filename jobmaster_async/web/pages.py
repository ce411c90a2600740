"""The dashboard's routes: the overview, the job list, a job, its actions, the live events, the
metrics, and logging in. Pages are Jinja2 templates (autoescaped: every job value is text);
URLs are built from the prefix the app is mounted under (``root_path``)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..errors import InvalidJobId, JobMasterError, JobNotFound
from ..ids import digits_of
from .charts import Series, bar_chart
from .job_pages import JobPages
from .live import Broadcaster, Snapshot
from .metrics import CONTENT_TYPE, JobMetrics
from .present import STATUSES, ago
from .security import BROWSER_AGE, BROWSER_COOKIE, COOKIE, Guard, route_path

if TYPE_CHECKING:
    from ..app import JobMaster

__all__ = ("Pages",)

logger = logging.getLogger(__name__)

#: The largest form an action or the login takes, in bytes.
MAX_FORM = 4096
#: How long the login cookie lasts, in seconds.
SESSION_AGE = 7 * 86400

THROUGHPUT = (Series("completed", ("completed",), "ok"),)
INSERTED = Series("inserted", ("inserted",), "info")
FAILURES = (
    Series("failed", ("failed",), "bad"),
    Series("retried", ("retried",), "warn"),
    Series("rescued", ("rescued",), "rescue"),
)
#: A search that may be a job id (as the list shows them: 12 hex digits or more)


class Pages(JobPages):
    """The routes of one dashboard app."""

    def __init__(
        self,
        jm: JobMaster,
        guard: Guard,
        broadcaster: Broadcaster,
        metrics: JobMetrics,
        templates: Jinja2Templates,
    ) -> None:
        self.jm = jm
        self.guard = guard
        self.broadcaster = broadcaster
        self.metrics = metrics
        self.templates = templates
        self._messages: dict[tuple[int, str], str] = {}
        self._regions: dict[tuple[int, datetime, str], dict[str, str]] = {}

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.overview, name="overview"),
            Route("/jobs", self.jobs, name="jobs"),
            Route("/jobs/{job_id}", self.job, name="job"),
            Route("/jobs/{job_id}/cancel", self.cancel, methods=["POST"], name="cancel"),
            Route("/jobs/{job_id}/retry", self.retry, methods=["POST"], name="retry"),
            Route("/events", self.events, name="events"),
            Route("/metrics", self.prometheus, name="metrics"),
            Route("/login", self.login, methods=["GET", "POST"], name="login"),
            Route("/logout", self.logout, methods=["POST"], name="logout"),
            Mount("/static", StaticFiles(packages=[("jobmaster_async.web", "static")]), name="static"),
        ]

    # -- rendering -------------------------------------------------------------------------------

    @staticmethod
    def base(request: Request) -> str:
        """The prefix the app is mounted under ("" at the root)."""
        root: str = request.scope.get("root_path", "")
        return root.rstrip("/")

    def render(self, request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        """A page; its forms carry a fresh CSRF token bound to the browser, whose id cookie it
        sets (a new id when the browser sent none) and renews."""
        credential: str | None = getattr(request.state, "credential", None)
        browser = self.guard.browser_of(request) or self.guard.new_browser()
        common = {
            "base": self.base(request),
            "schema": self.jm.schema,
            "read_only": self.guard.read_only,
            "csrf_token": self.guard.csrf_token(credential, browser) if credential else "",
            "signed_in": credential is not None and credential.startswith("session:"),
            "statuses": STATUSES,
            "live": credential is not None,
        }
        response = self.templates.TemplateResponse(request, name, {**common, **context}, status_code=status)
        response.headers["Cache-Control"] = "no-store"
        # Lax, not Strict: a link from another site (a chat, a ticket) then keeps the browser's
        # id instead of replacing it, which would void the forms of its other tabs; no cross-site
        # POST carries a Lax cookie either, and the id is no credential (the token is).
        response.set_cookie(
            BROWSER_COOKIE,
            browser,
            max_age=BROWSER_AGE,
            path=f"{common['base']}/",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        return response

    async def forbidden(self, request: Request, message: str) -> Response:
        """The 403 page of a POST that does not come from the dashboard itself."""
        logger.warning("dashboard: %s %s refused: %s", request.method, request.url.path, message)
        return self.problem(request, 403, "Forbidden: a cross-site request", message)

    def problem(self, request: Request, status: int, title: str, message: str) -> Response:
        return self.render(request, "problem.html", {"page": "problem", "title": title, "message": message}, status)

    async def unreachable(self, request: Request, exc: Exception) -> Response:
        """A page whose database read failed: 503, and the error in one line."""
        logger.warning("dashboard: %s %s: cannot read the database: %s", request.method, request.url.path, exc)
        return self.problem(request, 503, "Database unreachable", f"{type(exc).__name__}: {exc}")

    def regions(self, snapshot: Snapshot, base: str) -> dict[str, str]:
        """The overview's parts that live updates replace, as HTML (made once per snapshot and
        prefix, for every page and subscriber)."""
        key = (snapshot.version, snapshot.now, base)
        found = self._regions.get(key)
        if found is None:
            found = self._render_regions(snapshot, base)
            if len(self._regions) > 8:
                self._regions.clear()
            self._regions[key] = found
        return found

    def _render_regions(self, snapshot: Snapshot, base: str) -> dict[str, str]:
        context = {
            "snap": snapshot,
            "base": base,
            "now": snapshot.now,
            "ago": ago,
            "throughput": bar_chart("Jobs completed and inserted per minute", THROUGHPUT, snapshot.chart, INSERTED),
            "failures": bar_chart("Failures per minute", FAILURES, snapshot.chart),
            "hour": {
                reason: sum(counts.get(reason, 0) for _, counts in snapshot.chart)
                for reason in ("completed", "failed", "retried", "inserted", "rescued", "cancelled")
            },
        }
        env = self.templates.env
        names = ("totals", "charts", "depth", "workers", "schedules", "status")
        return {name: env.get_template(f"_{name}.html").render(context) for name in names}

    # -- pages -----------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        snapshot = await self.broadcaster.snapshot()
        regions = self.regions(snapshot, self.base(request))
        return self.render(request, "overview.html", {"page": "overview", "regions": regions, "snap": snapshot})

    async def _form(self, request: Request) -> dict[str, str] | None:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM:
                return None
        try:
            fields = parse_qs(body.decode("utf-8"), max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            return None
        return {name: values[0] for name, values in fields.items()}

    async def _action(self, request: Request) -> uuid.UUID | Response:
        """The job an action names, or the response refusing it."""
        if self.guard.read_only:
            message = "This dashboard is read-only: it cancels and retries nothing."
            return self.problem(request, 403, "Read-only", message)
        form = await self._form(request)
        credential: str = request.state.credential
        if form is None:
            return self.problem(request, 403, "Forbidden", "The form is not one of this dashboard's (no CSRF token).")
        refusal = self.guard.csrf_refusal(credential, self.guard.browser_of(request), form.get("csrf_token"))
        if refusal is not None:
            return self.problem(request, 403, "Forbidden", refusal)
        try:
            digits = digits_of(request.path_params["job_id"])
        except InvalidJobId as exc:
            return self.problem(request, 404, "Not a job id", str(exc))
        if len(digits) != 32:
            return self.problem(request, 404, "Not a job id", "actions take a job's full id")
        return uuid.UUID(digits)

    async def cancel(self, request: Request) -> Response:
        job_id = await self._action(request)
        if isinstance(job_id, Response):
            return job_id
        try:
            cancelled = await self.jm.cancel(job_id)
        except JobNotFound as exc:
            return self.problem(request, 404, "No such job", str(exc))
        logger.info("dashboard: cancel %s: %s", job_id, "cancelled" if cancelled else "already finished")
        done = "cancelled" if cancelled else "finished"
        return RedirectResponse(f"{self.base(request)}/jobs/{job_id}?done={done}", 303)

    async def retry(self, request: Request) -> Response:
        job_id = await self._action(request)
        if isinstance(job_id, Response):
            return job_id
        try:
            queued = await self.jm.retry(job_id)
        except JobNotFound as exc:
            return self.problem(request, 404, "No such job", str(exc))
        except JobMasterError as exc:  # not failed or cancelled
            return self.problem(request, 409, "Not retried", str(exc))
        logger.info("dashboard: retry %s: queued %s", job_id, queued)
        suffix = "done=retried" if queued == job_id else f"done=twin&twin={queued}"
        return RedirectResponse(f"{self.base(request)}/jobs/{job_id}?{suffix}", 303)

    # -- live events and metrics -----------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        base = self.base(request)
        overview = request.query_params.get("view") == "overview"

        async def stream() -> AsyncIterator[str]:
            yield "retry: 3000\n\n"
            try:
                async for snapshot in self.broadcaster.subscribe():
                    if snapshot is None:
                        yield ": keepalive\n\n"
                    else:
                        yield f"event: snapshot\ndata: {self._message(snapshot, base, overview)}\n\n"
            except Exception as exc:
                logger.warning("dashboard: live events ended: %s", exc)
                yield f"event: failure\ndata: {json.dumps(f'{type(exc).__name__}: {exc}')}\n\n"

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    def _message(self, snapshot: Snapshot, base: str, overview: bool) -> str:
        """A snapshot as an event's data (JSON on one line), made once per snapshot and prefix."""
        key = (snapshot.version, f"{base}|{overview}")
        message = self._messages.get(key)
        if message is None:
            data: dict[str, Any] = {
                "version": snapshot.version,
                "mark": snapshot.history_mark if snapshot.history_mark is not None else snapshot.version,
                "now": snapshot.now.isoformat(),
                "error": snapshot.error,
            }
            if overview:
                data["regions"] = self.regions(snapshot, base)
            message = json.dumps(data)
            if len(self._messages) > 16:
                self._messages.clear()
            self._messages[key] = message
        return message

    async def prometheus(self, request: Request) -> Response:
        try:
            await self.metrics.refresh()
        except Exception as exc:
            logger.warning("dashboard: /metrics cannot read the database: %s", exc)
            return PlainTextResponse(f"cannot read the database: {type(exc).__name__}", 503)
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE)

    # -- logging in ------------------------------------------------------------------------------

    @staticmethod
    def _next(value: str | None) -> str:
        """Where to go after logging in: a path of this app, never another site."""
        if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
            return "/"
        return value

    async def unauthorized(self, request: Request) -> Response:
        """The answer to a request without the token: the login form for a browser's GET."""
        headers = {"WWW-Authenticate": 'Bearer realm="jobmaster dashboard"'}
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            target = route_path(request.scope) + (f"?{request.url.query}" if request.url.query else "")
            response = self.render(request, "login.html", {"page": "login", "next": target, "failed": False}, 401)
            response.headers.update(headers)
            return response
        message = "Unauthorized: this dashboard needs its token (Authorization: Bearer <token>, or log in)"
        return PlainTextResponse(message, 401, headers=headers)

    async def login(self, request: Request) -> Response:
        base = self.base(request)
        if self.guard.token is None:
            return RedirectResponse(f"{base}/", 303)
        if request.method == "GET":
            target = self._next(request.query_params.get("next"))
            return self.render(request, "login.html", {"page": "login", "next": target, "failed": False})
        form = await self._form(request) or {}
        target = self._next(form.get("next"))
        if not self.guard.token_matches(form.get("token", "")):
            client = request.client.host if request.client else "?"
            logger.warning("dashboard: a login with a wrong token, from %s", client)
            return self.render(request, "login.html", {"page": "login", "next": target, "failed": True}, 401)
        response = RedirectResponse(f"{base}{target}", 303)
        response.set_cookie(
            COOKIE,
            self.guard.session(),
            max_age=SESSION_AGE,
            path=f"{base}/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        base = self.base(request)
        response = RedirectResponse(f"{base}/login", 303)
        response.delete_cookie(COOKIE, path=f"{base}/", httponly=True, samesite="strict")
        return response

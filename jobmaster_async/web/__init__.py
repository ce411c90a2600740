"""The dashboard: ``create_app(jm)`` returns an ASGI app (Starlette) that shows the queue, lists
and shows jobs, cancels and retries them, streams live updates and serves ``/metrics``. Mount it
under any prefix of a Starlette or FastAPI app, or run ``jobmaster-async dashboard``.

Needs the ``web`` extra (``pip install 'jobmaster_async[web]'``)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import asyncpg
import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.templating import Jinja2Templates

from .live import Broadcaster
from .metrics import JobMetrics
from .pages import Pages
from .present import FILTERS
from .security import Guard, GuardMiddleware, fingerprint

if TYPE_CHECKING:
    from ..app import JobMaster

__all__ = ("Dashboard", "create_app")

logger = logging.getLogger(__name__)


class Dashboard(Starlette):
    """The dashboard's ASGI app. Its live view keeps one database connection while it is used
    (closed after a minute without use); ``await app.aclose()`` closes it at once (its own
    lifespan does that when it is served alone; a parent app that mounts it may call it on
    shutdown)."""

    broadcaster: Broadcaster
    metrics: JobMetrics
    guard: Guard

    async def aclose(self) -> None:
        await self.broadcaster.close()


def create_app(
    jm: JobMaster,
    read_only: bool = False,
    token: str | None = None,
    secret: str | bytes | None = None,
    origins: Iterable[str] = (),
) -> Dashboard:
    """The dashboard of ``jm``'s schema as an ASGI app.

    ``token``: every request must carry it (``Authorization: Bearer <token>`` or the login
    form's cookie); without one, only requests to a loopback name (localhost, 127.0.0.1, [::1])
    are served. ``secret``: the key of the CSRF tokens of the cancel and retry forms; give the
    same one to every process that serves the dashboard (one is generated when None, kept in
    this process's memory only; the log shows its fingerprint, never the secret).
    ``read_only``: no cancel or retry (the buttons are hidden, the POSTs refused). ``origins``:
    where else its forms may be posted from besides its own origin (scheme and Host), such as
    ``https://ops.example.com`` behind a proxy that rewrites the Host header without sending
    X-Forwarded-Host."""
    if secret is None:
        key = secrets.token_urlsafe(32).encode()
        # never logged in full (DESIGN 9.1): its fingerprint, and where it is kept
        logger.warning(
            "dashboard: no secret given, so one was generated (sha256 fingerprint %s). It is kept in "
            "this process's memory only, never written or logged: the forms this process renders are "
            "accepted by it alone, until it stops. To have several processes (or a restart) accept "
            "each other's forms, give them all one secret: --secret or JOBMASTER_DASHBOARD_SECRET "
            "(the command), create_app(..., secret=...) (an app)",
            fingerprint(key),
        )
    else:
        key = secret.encode() if isinstance(secret, str) else bytes(secret)
        if not key:
            raise ValueError("the dashboard's secret is empty")
        logger.info("dashboard: CSRF secret given (sha256 fingerprint %s)", fingerprint(key))
    guard = Guard(token, key, read_only, origins)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("jobmaster_async.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    templates = Jinja2Templates(env=env)
    broadcaster = Broadcaster(jm)
    metrics = JobMetrics(jm)
    pages = Pages(jm, guard, broadcaster, metrics, templates)

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        await broadcaster.close()

    # a database that cannot be read: a 503 page saying so, not a 500
    faults: dict[Any, Any] = dict.fromkeys((asyncpg.PostgresError, asyncpg.InterfaceError, OSError), pages.unreachable)
    app = Dashboard(
        routes=pages.routes(),
        exception_handlers=faults,
        middleware=[
            Middleware(GuardMiddleware, guard=guard, unauthorized=pages.unauthorized, forbidden=pages.forbidden)
        ],
        lifespan=lifespan,
    )
    app.broadcaster, app.metrics, app.guard = broadcaster, metrics, guard
    return app

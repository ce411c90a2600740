"""What the dashboard's tests share: an HTTP client on the app (no server), the app served by
uvicorn on a loopback port (for server-sent events and the browser), the CSRF token of a page, and
a task that fails until told otherwise."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from starlette.types import ASGIApp

from jobmaster_async import task
from jobmaster_async.web import Dashboard
from jobmaster_async.web.server import Server

__all__ = ("client", "csrf_of", "fails_until", "served")


@task
def fails_until(path: str) -> str:
    """Fails until a file exists at ``path`` (the retry tests create it between two runs)."""
    if not os.path.exists(path):
        raise RuntimeError(f"{path} is not there yet")
    return "there"


@asynccontextmanager
async def client(
    app: ASGIApp, host: str = "127.0.0.1", origin: str | None = "same", **options: object
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client calling the app in this process (no server), as a request to ``host``. As a
    browser does on a POST, it sends an ``Origin``: the app's own (``"same"``), the one given, or
    none (None). It keeps the cookies the app sets (the login's, the browser id)."""
    headers = dict(options.pop("headers", None) or {})  # type: ignore[call-overload]
    if origin is not None:
        headers.setdefault("origin", f"http://{host}" if origin == "same" else origin)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url=f"http://{host}",
        headers=headers,
        **options,  # type: ignore[arg-type]
    ) as http:
        yield http


@asynccontextmanager
async def served(app: Dashboard) -> AsyncIterator[str]:
    """The app served by uvicorn on a free loopback port; yields its base URL. The socket is
    listening before this yields, so requests wait in its backlog until the server accepts them.
    Stopping it ends the app's live view (as the command's server does)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    server = Server(config, app)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)
        sock.close()


_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(page: str) -> str:
    """The CSRF token in a page's forms."""
    found = _CSRF.search(page)
    assert found is not None, "no form with a CSRF token on the page"
    return found.group(1)

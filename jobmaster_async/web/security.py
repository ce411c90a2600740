"""Who may use the dashboard: the token (a bearer header, or the cookie the login form sets),
the loopback Host rule when there is no token (DNS rebinding), CSRF tokens on actions, and the
headers every response carries.

- With a token, every request but the login form and the static files needs it: ``Authorization:
  Bearer <token>``, or the cookie set by logging in (HttpOnly, SameSite=Strict; it holds an HMAC
  of the token, not the token). Otherwise 401.
- Without a token, only requests whose Host is a loopback name (localhost, 127.0.0.1, [::1], any
  port) are served: a page of another site that rebinds its name to 127.0.0.1 is refused (403).
- Actions (POST) carry a CSRF token, an HMAC of the app's secret and the caller's credential, so
  several processes given one secret agree; a request authenticated by a bearer header needs
  none (a browser never sends one on its own). Compared with ``hmac.compare_digest``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ("COOKIE", "Guard", "GuardMiddleware", "host_name", "is_loopback_host", "route_path")

#: The login cookie's name.
COOKIE = "jobmaster_dashboard"

#: Host names that only this machine can reach.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})

#: What a login cookie is an HMAC of (with the token as the key).
_SESSION = b"jobmaster_async dashboard session"
_CSRF = b"jobmaster_async dashboard csrf\x00"

#: Paths served without the token (the login form and what it needs).
_OPEN_PATHS = ("/login",)
_OPEN_PREFIXES = ("/static/",)

#: Sent with every response: nothing of another origin runs or frames the dashboard.
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
)


def host_name(host: str) -> str | None:
    """The name of a Host header without its port, lower case (IPv6 in brackets); None when it
    is not one."""
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host.partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return name + "]"
    name, colon, port = host.partition(":")
    if not name or (colon and not port.isdigit()):
        return None
    return name


def is_loopback_host(host: str) -> bool:
    """Whether a Host header names this machine by a loopback name (any port)."""
    return host_name(host) in LOOPBACK_NAMES


def route_path(scope: Scope) -> str:
    """The request's path inside the app (without the prefix it is mounted under)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


class Guard:
    """The dashboard's rules for one app: its token (None: loopback only), its secret, and
    whether it is read-only."""

    def __init__(self, token: str | None, secret: bytes, read_only: bool) -> None:
        if token is not None and not token:
            raise ValueError("the dashboard's token is empty")
        self.token = token
        self.secret = secret
        self.read_only = read_only

    def session(self) -> str:
        """The login cookie's value: an HMAC of the token (the cookie never holds the token)."""
        assert self.token is not None
        return hmac.new(self.token.encode(), _SESSION, hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def credential(self, request: Request) -> str | None:
        """What the request authenticates with: "bearer", "session:<cookie>", "loopback" (no
        token, a loopback Host), or None (refused)."""
        if self.token is None:
            return "loopback" if is_loopback_host(request.headers.get("host", "")) else None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(given.strip()):
            return "bearer"
        cookie = request.cookies.get(COOKIE)
        if cookie and hmac.compare_digest(cookie.encode(), self.session().encode()):
            return f"session:{cookie}"
        return None

    def csrf_token(self, credential: str) -> str:
        """The CSRF token of pages shown to this credential."""
        digest = hmac.new(self.secret, _CSRF + credential.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def csrf_ok(self, credential: str, given: str | None) -> bool:
        """Whether an action may go on: a bearer request, or one with the right CSRF token."""
        if credential == "bearer":
            return True
        return given is not None and hmac.compare_digest(given.encode(), self.csrf_token(credential).encode())


class GuardMiddleware:
    """ASGI middleware: refuses what the Guard refuses, stores the credential in the request's
    state (``request.state.credential``) and adds the security headers to every response.
    ``unauthorized`` makes the 401 response (the login form, for a browser)."""

    def __init__(
        self,
        app: ASGIApp,
        guard: Guard,
        unauthorized: Callable[[Request], Awaitable[Response]],
    ) -> None:
        self.app = app
        self.guard = guard
        self.unauthorized = unauthorized

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        request = Request(scope)
        host = request.headers.get("host")
        if self.guard.token is None:
            if not host or host_name(host) is None:
                await PlainTextResponse("Bad Request: no valid Host header", 400)(scope, receive, send)
                return
            if not is_loopback_host(host):
                message = (
                    "Forbidden: without a token this dashboard answers only to a loopback Host "
                    "(localhost, 127.0.0.1, [::1]); start it with --token to serve other names"
                )
                await PlainTextResponse(message, 403)(scope, receive, send)
                return
        credential = self.guard.credential(request)
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        state["credential"] = credential
        if credential is None:
            path = route_path(scope)
            if path not in _OPEN_PATHS and not path.startswith(_OPEN_PREFIXES):
                await (await self.unauthorized(request))(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _with_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            present = {name.lower() for name, _ in headers}
            headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
            message = {**message, "headers": headers}
        await send(message)

    return sending

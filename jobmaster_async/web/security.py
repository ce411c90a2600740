"""Who may use the dashboard: the token (a bearer header, or the cookie the login form sets),
the loopback Host rule when there is no token (DNS rebinding), where actions come from (Origin),
CSRF tokens on actions, and the headers every response carries.

- With a token, every request but the login form and the static files needs it: ``Authorization:
  Bearer <token>``, or the cookie set by logging in (HttpOnly, SameSite=Strict; it holds an HMAC
  of the token, not the token). Otherwise 401.
- Without a token, only requests whose Host is a loopback name (localhost, 127.0.0.1, [::1], any
  port) are served: a page of another site that rebinds its name to 127.0.0.1 is refused (403).
- Every POST (and any other unsafe method) must come from the dashboard's own origin: its
  ``Origin`` header (else its ``Referer``'s origin) must be the request's own scheme and Host, or
  the X-Forwarded-Host (and -Proto) a proxy sent, or one of the origins the app was given; a page
  of the dashboard served over https may post to it over http (a proxy ending TLS), never the
  reverse. A POST with neither header is refused (browsers send Origin on every POST), unless a
  bearer header authenticates it (no browser sends one by itself). A cross-site page cannot set
  X-Forwarded-* on a browser's request (that takes a CORS preflight, which this app never
  grants), so trusting them here gives an attacker nothing. 403, saying why.
- Actions carry a CSRF token bound to the browser: each browser gets a random id in a cookie
  (``jobmaster_browser``: HttpOnly, SameSite=Lax, scoped to the app's prefix), and a form's token
  is ``<expiry>.<HMAC(secret, credential, browser id, expiry)>``, good for CSRF_AGE seconds from
  the page's rendering (every page renders fresh ones). The key is the app's secret, so several
  processes given one secret accept each other's forms; a token of another browser, an expired
  one or a wrong one is refused (403, saying which). Compared with ``hmac.compare_digest``. A
  request authenticated by a bearer header needs none.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = (
    "BROWSER_AGE",
    "BROWSER_COOKIE",
    "COOKIE",
    "CSRF_AGE",
    "Guard",
    "GuardMiddleware",
    "fingerprint",
    "host_name",
    "is_loopback_host",
    "parse_origin",
    "route_path",
)

#: The login cookie's name.
COOKIE = "jobmaster_dashboard"
#: The cookie holding the browser's random id, which its forms' CSRF tokens are bound to; its
#: lifetime in seconds (renewed by every page).
BROWSER_COOKIE = "jobmaster_browser"
BROWSER_AGE = 30 * 86400
#: Seconds a form's CSRF token is good for after its page was rendered.
CSRF_AGE = 4 * 3600

#: What a browser id looks like (secrets.token_urlsafe(24)); another value gets a new one.
_BROWSER_ID = re.compile(r"[A-Za-z0-9_-]{32}")
#: The port an origin without one means.
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Methods that change nothing (the Origin rule is for the others).
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: Host names that only this machine can reach.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})

#: What a login cookie is an HMAC of (with the token as the key); what a CSRF token's HMAC
#: starts with.
_SESSION = b"jobmaster_async dashboard session"
_CSRF = b"jobmaster_async dashboard csrf"

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


def _split_host(host: str) -> tuple[str, int | None] | None:
    """A Host header (or a URL's authority) as its name, lower case (IPv6 in brackets), and its
    port if it names one; None when it is not one."""
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host.partition("]")
        if not bracket or (rest and not (rest.startswith(":") and _is_port(rest[1:]))):
            return None
        return name + "]", int(rest[1:]) if rest else None
    name, colon, port = host.partition(":")
    if not name or (colon and not _is_port(port)):
        return None
    return name, int(port) if colon else None


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5


def host_name(host: str) -> str | None:
    """The name of a Host header without its port, lower case (IPv6 in brackets); None when it
    is not one."""
    split = _split_host(host)
    return None if split is None else split[0]


def fingerprint(key: bytes) -> str:
    """What the logs show of a secret: the first 8 hex digits of its SHA-256 (enough to tell
    whether two processes were given the same one, nothing to guess it from)."""
    return hashlib.sha256(key).hexdigest()[:8]


Origin = tuple[str, str, int]


def parse_origin(value: str) -> Origin | None:
    """An origin (or the origin of a URL, as a Referer gives it) as (scheme, host name, port);
    None when it is not an http(s) one (``null``, say)."""
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or "@" in parts.netloc:
        return None
    split = _split_host(parts.netloc)
    if split is None:
        return None
    name, port = split
    return scheme, name, _DEFAULT_PORTS[scheme] if port is None else port


def _same_origin(origin: Origin, scheme: str, host: str) -> bool:
    """Whether ``origin`` is the one a request with this scheme and Host header was sent to. An
    https origin matches an http request (a proxy ending TLS), never the reverse; a Host without
    a port matches the default port of the origin's scheme."""
    split = _split_host(host)
    if split is None:
        return False
    name, port = split
    given_scheme, given_name, given_port = origin
    if given_name != name or given_scheme not in (scheme, "https"):
        return False
    return given_port == (_DEFAULT_PORTS[given_scheme] if port is None else port)


def _first(value: str | None) -> str | None:
    """The first of a comma-separated header's values (the one the first proxy saw)."""
    if not value:
        return None
    return value.split(",")[0].strip() or None


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
    """The dashboard's rules for one app: its token (None: loopback only), its secret, whether
    it is read-only, and the origins its forms may also be posted from (besides its own)."""

    def __init__(self, token: str | None, secret: bytes, read_only: bool, origins: Iterable[str] = ()) -> None:
        if token is not None and not token:
            raise ValueError("the dashboard's token is empty")
        self.token = token
        self.secret = secret
        self.read_only = read_only
        self.origins: set[Origin] = set()
        for text in origins:
            origin = parse_origin(text)
            if origin is None:
                raise ValueError(f"not an origin: {text!r} (say https://name[:port])")
            self.origins.add(origin)
        #: seconds since the epoch (tests move it)
        self.clock: Callable[[], float] = time.time

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

    # -- CSRF --------------------------------------------------------------------------------------

    @staticmethod
    def browser_of(request: Request) -> str | None:
        """The browser's id, from its cookie (None when it sent none, or not one of ours)."""
        value = request.cookies.get(BROWSER_COOKIE)
        return value if value is not None and _BROWSER_ID.fullmatch(value) else None

    @staticmethod
    def new_browser() -> str:
        return secrets.token_urlsafe(24)

    def _mac(self, credential: str, browser: str, expires: int) -> str:
        message = b"\x00".join((_CSRF, credential.encode(), browser.encode(), str(expires).encode()))
        digest = hmac.new(self.secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def csrf_token(self, credential: str, browser: str) -> str:
        """The CSRF token of the forms of a page rendered now for this credential and browser."""
        expires = int(self.clock()) + CSRF_AGE
        return f"{expires}.{self._mac(credential, browser, expires)}"

    def csrf_refusal(self, credential: str, browser: str | None, given: str | None) -> str | None:
        """Why an action may not go on (None: it may): a bearer request needs no token; others
        need the token of a page rendered for this credential and browser, not expired."""
        if credential == "bearer":
            return None
        if not given:
            return "The form carries no CSRF token: reload the page and try again."
        if browser is None:
            return (
                "This browser sent no dashboard cookie, which the forms' CSRF tokens are bound to: "
                "allow cookies for this site, reload the page and try again."
            )
        expires_text, dot, mac = given.partition(".")
        if not dot or not expires_text.isdigit() or len(expires_text) > 12:
            return "The form's CSRF token is malformed: reload the page and try again."
        expires = int(expires_text)
        if not hmac.compare_digest(mac.encode(), self._mac(credential, browser, expires).encode()):
            return (
                "The form's CSRF token was not made for this browser (or not with this dashboard's "
                "secret): reload the page and try again."
            )
        if expires <= self.clock():
            hours = CSRF_AGE / 3600
            return f"The form's CSRF token expired (forms are good for {hours:g} hours): reload the page and try again."
        return None

    # -- Origin ------------------------------------------------------------------------------------

    def origin_refusal(self, request: Request, credential: str | None) -> str | None:
        """Why a POST is refused as not coming from the dashboard itself (None: it is not)."""
        stated = request.headers.get("origin")
        header = "Origin"
        if stated is None:
            stated, header = request.headers.get("referer"), "Referer"
        if stated is None:
            if credential == "bearer":
                return None  # not a browser: a browser sends Origin on every POST
            return (
                f"This {request.method} says neither where it comes from (no Origin or Referer header), "
                "so it is refused: browsers send Origin with every form. A script should use the "
                "token (Authorization: Bearer)."
            )
        origin = parse_origin(stated)
        scheme = request.url.scheme
        host = request.headers.get("host", "")
        if origin is not None:
            if origin in self.origins or _same_origin(origin, scheme, host):
                return None
            forwarded = _first(request.headers.get("x-forwarded-host"))
            proto = _first(request.headers.get("x-forwarded-proto")) or scheme
            if forwarded is not None and _same_origin(origin, proto.lower(), forwarded):
                return None
        shown = stated if len(stated) <= 200 else stated[:200] + "…"
        return (
            f"This {request.method} comes from another site ({header}: {shown}), not from this dashboard "
            f"({scheme}://{host}): refused as a cross-site request. Behind a proxy that changes the Host "
            "header, have it send X-Forwarded-Host (and X-Forwarded-Proto), or give the dashboard its "
            "public origin (create_app(..., origins=[...]), or --origin)."
        )


class GuardMiddleware:
    """ASGI middleware: refuses what the Guard refuses, stores the credential in the request's
    state (``request.state.credential``) and adds the security headers to every response.
    ``unauthorized`` makes the 401 response (the login form, for a browser); ``forbidden`` the
    403 page of a cross-site POST, saying why."""

    def __init__(
        self,
        app: ASGIApp,
        guard: Guard,
        unauthorized: Callable[[Request], Awaitable[Response]],
        forbidden: Callable[[Request, str], Awaitable[Response]],
    ) -> None:
        self.app = app
        self.guard = guard
        self.unauthorized = unauthorized
        self.forbidden = forbidden

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
        if request.method not in _SAFE_METHODS:
            refusal = self.guard.origin_refusal(request, credential)
            if refusal is not None:
                await (await self.forbidden(request, refusal))(scope, receive, send)
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

"""Connections: a user's engine or DSN turned into asyncpg connections and a pool."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import asyncpg
import asyncpg.exceptions as pgexc

from ..errors import ConfigurationError
from ..storable import decode_jsonb
from ..times import decode_timestamptz, encode_timestamptz
from .pool import Connect

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = (
    "DatabaseTarget",
    "connect",
    "database_hosts",
    "dsn_from",
    "host_list",
    "keep_alive",
    "opener",
    "read_only",
)

logger = logging.getLogger(__name__)

DatabaseTarget: TypeAlias = "AsyncEngine | Engine | str | URL"

# URL schemes of PostgreSQL, with or without a driver (SQLAlchemy's ``postgresql+asyncpg``).
_SCHEME = re.compile(r"(?P<backend>[A-Za-z][A-Za-z0-9.-]*)(\+[A-Za-z0-9_.-]+)?://")

# A libpq keyword/value connection string: ``host=h1,h2 port=5432 dbname=app``.
_CONNINFO = re.compile(r"\s*(?P<key>[A-Za-z_]+)\s*=\s*(?:'(?P<quoted>(?:[^'\\]|\\.)*)'|(?P<plain>[^\s']*))")

# Query parameters asyncpg sends to the server as settings, that are not server settings: other
# drivers' and libpq's client options. They are dropped (the pool has its own timeouts and TCP
# keepalives; asyncpg speaks UTF-8 and tries the hosts in order).
_CLIENT_ONLY = {
    "unix_sock",  # pg8000's; turned into host and port first
    "client_encoding",
    "connect_timeout",
    "async_fallback",
    "prepared_statement_cache_size",
    "hostaddr",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslcompression",
    "sslsni",
    "sslcertmode",
    "gssencmode",
    "gssdelegation",
    "channel_binding",
    "require_auth",
    "requiressl",
    "requirepeer",
    "load_balance_hosts",
    "replication",
    "options",  # turned into settings first
    "fallback_application_name",  # application_name, when there is none
}


# target_session_attrs whose choice is the first host that fits, so each host can be tried alone
# (prefer-standby falls back to any host when none fits: left to asyncpg).
_IN_ORDER = {"any", "read-write", "primary", "read-only", "standby"}


def dsn_from(target: DatabaseTarget) -> str:
    """An asyncpg DSN from a SQLAlchemy engine (sync or async, any PostgreSQL driver), URL or DSN.

    Any DSN libpq or asyncpg takes works: several hosts (``postgresql://u@h1:5432,h2:5433/db``,
    or ``?host=h1,h2``), ``target_session_attrs``, server settings as query parameters
    (``application_name``, or libpq's ``options=-c name=value``), a driver in the scheme
    (``postgresql+asyncpg://``, ``postgresql+psycopg://``), SQLAlchemy's ``?host=h1:5432&host=h2``,
    and libpq's ``key=value`` strings. Client options asyncpg has no use for are dropped, with a
    line saying so. A plain DSN is parsed without SQLAlchemy (worker processes stay lean)."""
    if isinstance(target, str):
        return _normalised(target)
    from sqlalchemy.engine import URL, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    if isinstance(target, AsyncEngine | Engine):
        url = target.url
    elif isinstance(target, URL):
        url = target
    else:
        raise ConfigurationError(
            f"db_engine must be a SQLAlchemy Engine/AsyncEngine or a DSN string, got {type(target).__name__}"
        )
    return _normalised(url.render_as_string(hide_password=False))


def _normalised(text: str) -> str:
    """``text`` as asyncpg reads it (unchanged when it already is)."""
    text = text.strip()
    scheme = _SCHEME.match(text)
    if scheme is None:
        if _CONNINFO.match(text):
            return _normalised(_conninfo_url(text))
        raise ConfigurationError(f"not a database URL: {text!r}")
    backend = scheme["backend"].lower()
    if backend not in ("postgresql", "postgres"):
        raise ConfigurationError(f"jobmaster_async needs PostgreSQL, got a {backend} URL")
    rest = text[scheme.end() :].partition("#")[0]
    location, _, query = rest.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    fixed = _asyncpg_query(pairs)
    if scheme[0] in ("postgresql://", "postgres://") and fixed == pairs and "#" not in text:
        return text
    encoded = urlencode(fixed, quote_via=quote, safe=",:/")
    return f"postgresql://{location}" + (f"?{encoded}" if encoded else "")


def _asyncpg_query(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Query parameters as asyncpg reads them: hosts (and ports) given several times joined
    into one list, pg8000's ``unix_sock`` as host and port, libpq's ``options`` as settings,
    client options of other drivers dropped."""
    fixed: list[tuple[str, str]] = []
    lists: dict[str, list[str]] = {}
    settings: list[tuple[str, str]] = []
    fallback_name = None
    for key, value in pairs:
        if key in ("host", "port"):
            if key not in lists:
                lists[key] = []
                fixed.append((key, ""))  # its place; filled below
            lists[key].append(value)
        elif key == "unix_sock":  # pg8000: /dir/.s.PGSQL.5432
            directory, _, name = value.rpartition("/")
            lists.setdefault("host", []).append(directory)
            port = name.rpartition(".")[2]
            if port.isdigit():
                lists.setdefault("port", []).append(port)
        elif key == "options":
            settings.extend(_options_settings(value))
        elif key == "fallback_application_name":
            fallback_name = value
        elif key in _CLIENT_ONLY:
            logger.info("the DSN's %s=%s is ignored (asyncpg has no such option)", key, value)
        else:
            fixed.append((key, value))
    for key, values in lists.items():
        joined = ",".join(values)
        if (key, "") in fixed:
            fixed[fixed.index((key, ""))] = (key, joined)
        else:
            fixed.append((key, joined))
    names = {key for key, _ in fixed}
    fixed.extend((key, value) for key, value in settings if key not in names)
    if fallback_name is not None and "application_name" not in names:
        fixed.append(("application_name", fallback_name))
    return fixed


def _options_settings(options: str) -> list[tuple[str, str]]:
    """libpq's ``options`` (``-c name=value --name=value``, a backslash escaping a space) as
    server settings."""
    words = [word.replace("\\ ", " ") for word in re.split(r"(?<!\\)\s+", options.strip()) if word]
    found: list[tuple[str, str]] = []
    for index, word in enumerate(words):
        setting = None
        if word.startswith("--"):
            setting = word[2:]
        elif word == "-c" and index + 1 < len(words):
            setting = words[index + 1]
        elif word.startswith("-c") and word != "-c":
            setting = word[2:]
        if setting and "=" in setting:
            name, _, value = setting.partition("=")
            found.append((name.replace("-", "_"), value))
    return found


def _conninfo_url(text: str) -> str:
    """A libpq ``key=value`` string as a URL whose query says it all."""
    pairs, position = [], 0
    while position < len(text.rstrip()):
        found = _CONNINFO.match(text, position)
        if found is None:
            raise ConfigurationError(f"not a database URL: {text!r}")
        value = found["quoted"] if found["quoted"] is not None else found["plain"]
        pairs.append((found["key"], re.sub(r"\\(.)", r"\1", value)))
        position = found.end()
    pairs = [("database" if key == "dbname" else key, value) for key, value in pairs]
    return "postgresql://?" + urlencode(pairs, quote_via=quote, safe=",:/")


def host_list(dsn: str) -> list[tuple[str, int]]:
    """The hosts (or unix socket directories) and ports of a DSN, in the order they are tried
    ([] when the DSN does not say: the driver's defaults)."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    spec = parts.netloc.rpartition("@")[2]
    hosts: list[tuple[str, str]] = []
    for item in filter(None, (spec or query.get("host") or os.environ.get("PGHOST", "")).split(",")):
        if item.startswith("[") and "]" in item:  # [::1]:5432
            host, _, rest = item[1:].partition("]")
            hosts.append((unquote(host), rest.removeprefix(":")))
        elif item.startswith("/"):
            hosts.append((unquote(item).rstrip("/") or "/", ""))
        else:
            host, _, port = item.partition(":")
            hosts.append((unquote(host), port))
    ports = (query.get("port") or os.environ.get("PGPORT", "") or "5432").split(",")
    found = []
    for index, (host, port) in enumerate(hosts):
        port = port or (ports[index] if len(ports) == len(hosts) else ports[0])
        found.append((host, int(port)))
    return found


def database_hosts(dsn: str) -> list[str]:
    """Where a DSN points, in the order its hosts are tried, without user or password: each
    ``host:port``, or a unix socket's path ([] when the DSN does not say: the driver's
    defaults)."""
    return [f"{host}/.s.PGSQL.{port}" if host.startswith("/") else f"{host}:{port}" for host, port in host_list(dsn)]


async def read_only(conn: asyncpg.Connection, deadline: float | None = None) -> bool:
    """Does the server of ``conn`` refuse writes (a standby, or read-only by default)? Told by
    what PostgreSQL 14+ reports at connection (no round trip), else asked."""
    settings = conn.get_settings()
    if getattr(settings, "default_transaction_read_only", "off") == "on":
        return True
    standby = getattr(settings, "in_hot_standby", None)
    if standby is not None:
        return bool(standby == "on")
    return bool(await conn.fetchval("SELECT pg_catalog.pg_is_in_recovery()", timeout=deadline))


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb values arrive as Python objects; json stays text both ways, so `$1::json` takes JSON text.
    # A value Python cannot read decodes as UndecodableJSON instead of failing the whole fetch.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=decode_jsonb, schema="pg_catalog")
    # timestamptz as asyncpg decodes it, except that a time a datetime cannot hold (a far run_at
    # written before it was bounded, or past the library) decodes as times.UndecodableTime instead
    # of failing the whole fetch: every listing still shows the row. (No round trip: a built-in
    # type. The hot path reads no timestamptz. Arrays of timestamptz keep asyncpg's decoder: the
    # library reads none.)
    await conn.set_type_codec(
        "timestamptz", encoder=encode_timestamptz, decoder=decode_timestamptz, schema="pg_catalog", format="tuple"
    )


async def connect(dsn: str, connect_kwargs: dict[str, Any] | None = None) -> asyncpg.Connection:
    """One connection with the JSON and timestamptz codecs."""
    conn = await asyncpg.connect(dsn, **(connect_kwargs or {}))
    try:
        await _init_connection(conn)
    except BaseException:
        conn.terminate()
        raise
    return conn


def keep_alive(sock: socket.socket, seconds: float) -> None:
    """TCP keepalives (and a limit on unacknowledged data) so that the kernel closes a
    connection whose peer vanished without a reset within about ``seconds``, even while it is
    idle (asyncpg has no option for it; server settings cannot do it: they are the server's side)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a unix socket cannot be half-open
    idle, interval = max(1, int(seconds / 3)), max(1, int(seconds / 6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", idle),  # first probe after that much silence
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", 3),  # unanswered probes before the kernel gives up
        ("TCP_USER_TIMEOUT", int(seconds * 1000)),  # ms data may stay unacknowledged
    ):
        option = getattr(socket, name, None)  # Linux has all four; others some
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _keepalive_class(base: type[asyncpg.Connection], seconds: float) -> type[asyncpg.Connection]:
    """asyncpg's ``connection_class`` hook: the only place it shows the new connection's socket."""

    class KeepAliveConnection(base):  # type: ignore[misc]
        def __init__(self, protocol: Any, transport: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(protocol, transport, *args, **kwargs)
            sock = transport.get_extra_info("socket")
            try:
                keep_alive(sock, seconds)
            except (OSError, AttributeError) as exc:  # a TLS transport's socket may not take options
                logger.debug("no TCP keepalive on %r: %s", sock, exc)

    return KeepAliveConnection


def opener(dsn: str, connect_kwargs: dict[str, Any] | None = None, timeout: float | None = None) -> Connect:
    """A function opening connections named after this process (unless the DSN or
    ``connect_kwargs`` name them), with our codecs. With a
    ``timeout``, opening one (connect, authenticate, set up codecs) has that deadline and its
    TCP keepalives detect a vanished server within about that time. A DSN of several hosts
    gives each host that deadline, as libpq's ``connect_timeout`` does (asyncpg's deadline is
    for all of them: a first host gone without a reset would leave no time for the others)."""
    kwargs = dict(connect_kwargs or {})
    query = dict(parse_qsl(urlsplit(dsn).query))
    settings = dict(kwargs.pop("server_settings", {}))
    if "application_name" not in query:  # the DSN's wins
        settings.setdefault("application_name", f"jobmaster_async:{os.getpid()}")
    kwargs["server_settings"] = settings
    if timeout is not None:
        kwargs["connection_class"] = _keepalive_class(kwargs.get("connection_class", asyncpg.Connection), timeout)

    async def open_connection() -> asyncpg.Connection:
        async with asyncio.timeout(timeout):
            return await connect(dsn, kwargs)

    attrs = kwargs.get("target_session_attrs") or query.get("target_session_attrs")
    attrs = attrs or os.environ.get("PGTARGETSESSIONATTRS") or "any"
    hosts = host_list(dsn) if "host" not in kwargs and "port" not in kwargs else []
    if timeout is None or len(hosts) < 2 or attrs not in _IN_ORDER:
        return open_connection
    each = [{**kwargs, "host": host, "port": port} for host, port in hosts]

    async def open_first_that_fits() -> asyncpg.Connection:
        failures: list[BaseException] = []
        for host_kwargs in each:
            try:
                async with asyncio.timeout(timeout):
                    return await connect(dsn, host_kwargs)
            except (OSError, pgexc.CannotConnectNowError, pgexc.TargetServerAttributeNotMatched) as exc:
                failures.append(exc)
        # as asyncpg: the last host's error, unless it was only the wrong kind of server
        errors = [exc for exc in failures if not isinstance(exc, pgexc.TargetServerAttributeNotMatched)]
        raise (errors or failures)[-1]

    return open_first_that_fits

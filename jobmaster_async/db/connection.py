"""Connections: a user's engine or DSN turned into asyncpg connections and a pool."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import parse_qsl

import asyncpg

from ..errors import ConfigurationError
from ..storable import decode_jsonb
from ..times import decode_timestamptz, encode_timestamptz
from .pool import Connect, Pool

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ("DatabaseTarget", "connect", "create_pool", "dsn_from", "keep_alive", "opener")

logger = logging.getLogger(__name__)

DatabaseTarget: TypeAlias = "AsyncEngine | Engine | str | URL"

# A DSN asyncpg takes as it is: no driver in the scheme, no query parameter of another driver.
# Such DSNs (worker processes, the CLI) never import SQLAlchemy: a smaller, faster-starting process.
_PLAIN_DSN = re.compile(r"postgres(ql)?://[^?]*(\?(?P<query>.*))?")

# Query parameters of other drivers that asyncpg does not understand.
_DRIVER_ONLY = {
    "unix_sock",
    "client_encoding",
    "application_name",
    "connect_timeout",
    "async_fallback",
    "prepared_statement_cache_size",
}


def dsn_from(target: DatabaseTarget) -> str:
    """An asyncpg DSN from a SQLAlchemy engine (sync or async, any PostgreSQL driver), URL or DSN."""
    plain = _PLAIN_DSN.fullmatch(target) if isinstance(target, str) else None
    if plain and not _DRIVER_ONLY & {key for key, _ in parse_qsl(plain["query"] or "")}:
        return str(target)
    from sqlalchemy.engine import URL, Engine, make_url
    from sqlalchemy.ext.asyncio import AsyncEngine

    if isinstance(target, AsyncEngine | Engine):
        url = target.url
    elif isinstance(target, URL):
        url = target
    elif isinstance(target, str):
        try:
            url = make_url(target)
        except Exception as exc:
            raise ConfigurationError(f"not a database URL: {target!r}") from exc
    else:
        raise ConfigurationError(
            f"db_engine must be a SQLAlchemy Engine/AsyncEngine or a DSN string, got {type(target).__name__}"
        )
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise ConfigurationError(f"jobmaster_async needs PostgreSQL, got a {url.get_backend_name()} URL")
    query = dict(url.query)
    unix_sock = query.pop("unix_sock", None)
    if isinstance(unix_sock, str):  # pg8000: /dir/.s.PGSQL.5432
        directory, _, name = unix_sock.rpartition("/")
        query["host"] = directory
        port = name.rpartition(".")[2]
        if port.isdigit():
            query["port"] = port
    for key in _DRIVER_ONLY & set(query):
        query.pop(key)
    url = url.set(drivername="postgresql", query=query)
    return url.render_as_string(hide_password=False)


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
    """A function opening connections named after this process, with our codecs. With a
    ``timeout``, opening one (connect, authenticate, set up codecs) has that deadline and its
    TCP keepalives detect a vanished server within about that time."""
    kwargs = dict(connect_kwargs or {})
    settings = {"application_name": f"jobmaster_async:{os.getpid()}", **kwargs.pop("server_settings", {})}
    kwargs["server_settings"] = settings
    if timeout is not None:
        kwargs["connection_class"] = _keepalive_class(kwargs.get("connection_class", asyncpg.Connection), timeout)

    async def open_connection() -> asyncpg.Connection:
        async with asyncio.timeout(timeout):
            return await connect(dsn, kwargs)

    return open_connection


def create_pool(
    dsn: str, connect_kwargs: dict[str, Any] | None = None, max_size: int = 10, timeout: float | None = None
) -> Pool:
    """The pool a JobMaster runs its statements on (connections are opened on first use)."""
    return Pool(opener(dsn, connect_kwargs, timeout), max_size)

"""A TCP proxy in front of the test server, for network faults the server cannot make itself.

Clients connect to 127.0.0.1:<port>; each connection is forwarded to the server (TCP, or the unix
socket the embedded server listens on). ``blackhole()`` stops forwarding in both directions
without closing anything: a pulled cable, a failover, a NAT entry gone; no reset reaches either
side. ``resume()`` forwards again what was held back, as TCP retransmission would, except to a
side whose peer closed in the meantime (its kernel stopped retransmitting): that connection is
closed instead. ``fail_over()`` ends a black hole as a failover does: the connections cut stay
cut for good (their server is gone, and no reset ever comes), new ones reach the server.
``hold_closes`` passes the server's last message on but not its close (a FIN lost), so a client
sees a terminated backend's FATAL message without the end of the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from jobmaster_async.events import Count

__all__ = ("Proxy",)

CHUNK = 65536


def _upstream(dsn: str) -> tuple[str, int] | str:
    """Where the server listens: (host, port), or the path of its unix socket."""
    parts = urlsplit(dsn)
    host = dict(parse_qsl(parts.query)).get("host") or parts.hostname or "localhost"
    port = parts.port or 5432
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


class _Pipe:
    """One direction of one connection: what its source sent and the proxy holds back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_server: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.from_server = from_server
        self.held = bytearray()
        self.ended = False  # the source closed
        self.gave_up = False  # ... while black-holed: what it sent then is lost
        self.dead = False  # cut for good
        self.changed = asyncio.Event()


class Proxy:
    def __init__(self, dsn: str, port: int = 0) -> None:
        self.target_dsn = dsn
        self._upstream = _upstream(dsn)
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[_Pipe] = set()
        self.hold_closes = False
        self.port = port  # 0: any free one
        #: connections accepted, and connections the server closed
        self.accepted = Count()
        self.closed_by_server = Count()

    @property
    def dsn(self) -> str:
        """The server's DSN, through this proxy."""
        parts = urlsplit(self.target_dsn)
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")])
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def blackhole(self) -> None:
        """Stops forwarding, closing nothing."""
        self._open.clear()

    def resume(self) -> None:
        """Forwards again."""
        self._open.set()

    def fail_over(self) -> None:
        """Forwards again, new connections only."""
        for pipe in self._pipes:
            pipe.dead = True
        self._open.set()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted.add()
        self._writers.add(client_writer)
        try:
            if isinstance(self._upstream, str):
                server_reader, server_writer = await asyncio.open_unix_connection(self._upstream)
            else:
                server_reader, server_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            client_writer.close()
            return
        self._writers.add(server_writer)
        upward = _Pipe(client_reader, server_writer, from_server=False)
        downward = _Pipe(server_reader, client_writer, from_server=True)
        self._pipes.update((upward, downward))
        for job in (self._read(upward), self._read(downward), self._write(upward), self._write(downward)):
            task = asyncio.create_task(job)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _read(self, pipe: _Pipe) -> None:
        with contextlib.suppress(OSError):
            while data := await pipe.reader.read(CHUNK):
                pipe.held += data
                pipe.changed.set()
        pipe.ended = True
        pipe.gave_up = not self._open.is_set()
        if pipe.from_server:
            self.closed_by_server.add()
        pipe.changed.set()

    async def _write(self, pipe: _Pipe) -> None:
        with contextlib.suppress(OSError):
            while not pipe.ended or pipe.held:
                await pipe.changed.wait()
                pipe.changed.clear()
                await self._open.wait()
                if pipe.dead:
                    return  # neither data nor the end of it ever arrives
                if pipe.gave_up:
                    break
                if pipe.held:
                    data, pipe.held = bytes(pipe.held), bytearray()
                    pipe.writer.write(data)
                    await pipe.writer.drain()
        if not (pipe.from_server and self.hold_closes and not pipe.gave_up):
            pipe.writer.close()
        self._pipes.discard(pipe)

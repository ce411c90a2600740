"""What every command shares: the root group's settings, running a coroutine, and errors that
are not bugs told in one line."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import click

from ..app import JobMaster
from ..errors import InvalidJobId, JobMasterError
from . import embedded

__all__ = ("Settings", "call", "pass_settings", "run")

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    """Runs a coroutine on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


class Settings:
    def __init__(self, dsn: str | None, schema: str, verbose: int) -> None:
        self.dsn = dsn
        self.schema = schema
        self.verbose = verbose

    def resolve_dsn(self) -> str:
        if self.dsn:
            return self.dsn
        return embedded.embedded_dsn()

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """JobMaster errors and unreachable databases as a clean message and exit code 1."""
        try:
            yield
        except Exception as exc:
            error = _sole(exc)
            message = _one_line(error)
            if message is not None:
                raise message from error
            if error is not exc:
                raise error from None
            raise

    def master(self, apps: tuple[str, ...] = (), **options: Any) -> JobMaster:
        with self.errors():
            return JobMaster(self.resolve_dsn(), schema=self.schema, task_modules=_modules(apps), **options)


def _modules(apps: tuple[str, ...]) -> list[str]:
    return [name.strip() for app in apps for name in app.split(",") if name.strip()]


pass_settings = click.make_pass_decorator(Settings)


def _sole(exc: BaseException) -> BaseException:
    """The error inside groups of one (task groups wrap what they raise)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _one_line(exc: BaseException) -> click.ClickException | None:
    """What the user is told, in one line, of errors that are not bugs: JobMaster errors and
    database errors (None for the others, raised with their traceback)."""
    if isinstance(exc, InvalidJobId):
        return click.UsageError(str(exc))  # exit code 2: what was typed is not an id
    if isinstance(exc, JobMasterError):
        return click.ClickException(str(exc))
    if isinstance(exc, OSError):  # refused, DNS, TLS, timeouts
        return click.ClickException(f"cannot reach the database: {exc or type(exc).__name__}")
    import asyncpg
    from asyncpg.exceptions import InternalClientError

    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | InternalClientError):
        return click.ClickException(f"database error: {type(exc).__name__}: {exc}")
    return None


def call(settings: Settings, fn: Callable[[JobMaster], Awaitable[T]], apps: tuple[str, ...] = (), **options: Any) -> T:
    """Opens a JobMaster for these settings, awaits ``fn`` with it, and closes it."""

    async def main() -> T:
        async with settings.master(apps, **options) as jm:
            return await fn(jm)

    with settings.errors():
        return run(main())

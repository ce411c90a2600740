"""What every command shares: the root group's settings (which each command also takes after its
name), importing task modules, running a coroutine, and errors that are not bugs told in one line
(``-v`` adds their traceback)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import shlex
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import click

from ..app import JobMaster
from ..db.connection import database_hosts
from ..errors import InvalidJobId, JobMasterError
from . import embedded

__all__ = (
    "Settings",
    "call",
    "configure_logging",
    "database_location",
    "import_task_modules",
    "pass_settings",
    "run",
    "settings_options",
)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: SQLSTATEs of a statement naming what a schema that was never deployed (or deployed by an older
#: version) lacks: undefined column, function, table or object; invalid schema name.
_UNDEFINED_STATES = ("42703", "42883", "42P01", "42704", "3F000")


def run(coro: Awaitable[T]) -> T:
    """Runs a coroutine on uvloop when it is installed, else on asyncio's loop. Only the import
    is guarded: an ImportError the coroutine raises is its own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


def configure_logging(verbose: int) -> None:
    """Warnings by default; -v: info; -vv: debug."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)


class Settings:
    def __init__(self, dsn: str | None, schema: str, verbose: int) -> None:
        self.dsn = dsn
        self.schema = schema
        self.verbose = verbose
        self._resolved: str | None = None

    def resolve_dsn(self) -> str:
        if self.dsn:
            return self.dsn
        if self._resolved is None:
            self._resolved = embedded.embedded_dsn()
        return self._resolved

    def deploy_hint(self, apps: tuple[str, ...] = ()) -> str:
        """The command that deploys this schema."""
        schema = "" if self.schema == "jobmaster" else f"--schema {shlex.quote(self.schema)} "
        modules = ",".join(_modules(apps)) or "…"
        return f"jobmaster-async {schema}deploy --app {modules}"

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """JobMaster errors and unreachable databases as a clean message and exit code 1 (with
        -v, their traceback first)."""
        try:
            yield
        except Exception as exc:
            error = _sole(exc)
            message = _one_line(error, self.dsn or self._resolved)
            if message is None:  # a bug: its traceback
                if error is not exc:
                    raise error from None
                raise
            if self.verbose:
                cause = error if message is not error else error.__cause__ or error.__context__
                if cause is not None:
                    traceback.print_exception(cause, file=sys.stderr)
            if message is exc:
                raise
            raise message from None

    def master(self, apps: tuple[str, ...] = (), **options: Any) -> JobMaster:
        """A JobMaster for these settings, its task modules imported (call it inside ``errors()``)."""
        modules = import_task_modules(apps)
        return JobMaster(self.resolve_dsn(), schema=self.schema, task_modules=modules, **options)


def _modules(apps: tuple[str, ...]) -> list[str]:
    return [name.strip() for app in apps for name in app.split(",") if name.strip()]


def import_task_modules(apps: tuple[str, ...]) -> list[str]:
    """Imports the task modules named by ``--app`` (``a.b[,c.d]``, repeatable), the current
    directory importable first (as ``python -m`` makes it, and Celery, arq and uvicorn do), so
    that ``--app billing`` finds ``./billing.py``. A module that cannot be found, or that imports
    one that cannot, is an error in one line; any other error in it is raised with its traceback
    (a bug in the module)."""
    modules = _modules(apps)
    if modules:
        here = os.getcwd()
        if not any(os.path.abspath(entry or os.curdir) == here for entry in sys.path):
            sys.path.insert(0, here)
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise click.ClickException(f"cannot import task module {module!r}: {exc}") from exc
    return modules


def _stored(name: str) -> dict[str, Any]:
    """An option's value set on the Settings (not passed to the command)."""
    return {"expose_value": False, "callback": _settings_option(name)}


def _settings_option(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        settings = ctx.find_object(Settings)
        if settings is None or value is None or value == 0:
            return
        if name == "verbose":
            settings.verbose += value
            configure_logging(settings.verbose)
        else:
            setattr(settings, name, value)

    return store


def settings_options(command: F) -> F:
    """``--dsn``, ``--schema`` and ``-v`` after the command's name too: ``jobmaster-async jobs
    --schema x`` is ``jobmaster-async --schema x jobs``."""
    options = [
        click.option("--dsn", help="PostgreSQL DSN (as before the command).", **_stored("dsn")),
        click.option("--schema", help="Schema name (as before the command).", **_stored("schema")),
        click.option("-v", "--verbose", count=True, help="More logging (as before the command).", **_stored("verbose")),
    ]
    for option in reversed(options):
        command = option(command)
    return command


pass_settings = click.make_pass_decorator(Settings)


def _sole(exc: BaseException) -> BaseException:
    """The error inside groups of one (task groups wrap what they raise)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def database_location(dsn: str | None) -> str | None:
    """Where a DSN points, without its user or password: ``host:port``, or the unix socket's
    path; several hosts separated by ", " (None when the DSN does not say: the driver's
    defaults)."""
    if not dsn:
        return None
    try:
        hosts = database_hosts(dsn)
    except ValueError:
        return None
    return ", ".join(hosts) if hosts else None


def _one_line(exc: BaseException, dsn: str | None = None) -> click.ClickException | None:
    """What the user is told, in one line, of errors that are not bugs: JobMaster errors and
    database errors (None for the others, raised with their traceback)."""
    if isinstance(exc, click.ClickException):
        return exc
    if isinstance(exc, InvalidJobId):
        return click.UsageError(str(exc))  # exit code 2: what was typed is not an id
    if isinstance(exc, JobMasterError):
        return click.ClickException(str(exc))
    if isinstance(exc, OSError):  # refused, DNS, TLS, timeouts, no such socket
        where = database_location(dsn)
        at = f" at {where}" if where and where not in str(exc) else ""
        return click.ClickException(f"cannot reach the database{at}: {exc or type(exc).__name__}")
    import asyncpg
    from asyncpg.exceptions import InternalClientError

    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | InternalClientError):
        return click.ClickException(f"database error: {type(exc).__name__}: {exc}")
    return None


def _undefined(exc: BaseException) -> bool:
    """An error of a statement naming something the schema lacks."""
    return getattr(_sole(exc), "sqlstate", None) in _UNDEFINED_STATES


async def check_deployed(jm: JobMaster, hint: str) -> None:
    """Raises a one-line error when the schema was never deployed, or by an older version."""
    version = await jm.schema_version()
    if version is None:
        raise click.ClickException(f'schema "{jm.schema}" is not deployed: run {hint}')
    if version < jm.sql.latest_version:
        raise click.ClickException(
            f'schema "{jm.schema}" is at version {version}, this jobmaster_async needs {jm.sql.latest_version}: '
            f"run {hint} to migrate it"
        )


def call(settings: Settings, fn: Callable[[JobMaster], Awaitable[T]], apps: tuple[str, ...] = (), **options: Any) -> T:
    """Opens a JobMaster for these settings, awaits ``fn`` with it, and closes it. A statement
    that fails because the schema lacks a table or function says whether it was deployed."""

    async def main() -> T:
        async with settings.master(apps, **options) as jm:
            try:
                return await fn(jm)
            except Exception as exc:
                if _undefined(exc):
                    await check_deployed(jm, settings.deploy_hint(apps))
                raise

    with settings.errors():
        return run(main())

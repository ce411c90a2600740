"""The ``jobmaster-async`` command: the root group, with the commands of the modules beside it.

Each module defines its commands on its own and knows nothing of this group; only this file
puts them together, so imports point one way: here -> commands -> context and rendering."""

from __future__ import annotations

import click

from .commands import cancel, deploy, insert, list_jobs, prune, retry, schedules, show, sql
from .context import Settings, configure_logging, settings_options
from .dashboard import dashboard
from .database import db
from .demo import demo
from .worker import worker

__all__ = ("main",)


@click.group()
@click.option("--dsn", envvar="JOBMASTER_DSN", help="PostgreSQL DSN (else $JOBMASTER_DSN, else the embedded server).")
@click.option("--schema", envvar="JOBMASTER_SCHEMA", default="jobmaster", show_default=True, help="Schema name.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv: debug).")
@click.pass_context
def main(ctx: click.Context, dsn: str | None, schema: str, verbose: int) -> None:
    """jobmaster-async: an asyncio job queue on PostgreSQL."""
    configure_logging(verbose)
    ctx.obj = Settings(dsn, schema, verbose)


def _add(command: click.Command) -> None:
    """Adds a command; it (each of a group's) takes --dsn, --schema and -v after its name too."""
    for leaf in command.commands.values() if isinstance(command, click.Group) else [command]:
        settings_options(leaf)
    main.add_command(command)


for _command in (worker, deploy, insert, list_jobs, show, cancel, retry, schedules, prune, sql, dashboard, db, demo):
    _add(_command)

"""The ``jobmaster-async`` command: the root group, with the commands of the modules beside it.

Each module defines its commands on its own and knows nothing of this group; only this file
puts them together, so imports point one way: here -> commands -> context and rendering."""

from __future__ import annotations

import logging

import click

from .commands import cancel, deploy, insert, list_jobs, retry, show, sql
from .context import Settings
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
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Settings(dsn, schema, verbose)


main.add_command(worker)
main.add_command(deploy)
main.add_command(insert)
main.add_command(list_jobs)
main.add_command(show)
main.add_command(cancel)
main.add_command(retry)
main.add_command(sql)
main.add_command(db)
main.add_command(demo)

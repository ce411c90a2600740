"""``jobmaster-async db``: the embedded PostgreSQL the commands use when given no DSN."""

from __future__ import annotations

import click

from . import embedded
from .context import Settings, pass_settings

__all__ = ("db",)


@click.group()
def db() -> None:
    """The embedded PostgreSQL (used when no DSN is given)."""


@db.command()
@pass_settings
def url(settings: Settings) -> None:
    """Print the DSN (starting the embedded server if needed), e.g. for psql."""
    with settings.errors():
        click.echo(settings.resolve_dsn())


@db.command()
@pass_settings
def stop(settings: Settings) -> None:
    """Stop the embedded server."""
    with settings.errors():
        stopped = embedded.stop_embedded()
    click.echo("stopped" if stopped else "not running")

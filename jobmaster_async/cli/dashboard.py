"""``jobmaster-async dashboard``: the web dashboard (jobmaster_async.web) served by uvicorn.

Safe by default: it listens on 127.0.0.1, and refuses another address unless a token is set
(then every request needs it)."""

from __future__ import annotations

import ipaddress
import logging

import click

from .context import Settings, check_deployed, pass_settings, run

__all__ = ("dashboard", "is_loopback_address")

logger = logging.getLogger(__name__)


def is_loopback_address(host: str) -> bool:
    """Whether listening on ``host`` reaches this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


@click.command()
@click.option("--app", "apps", multiple=True, help="Task module(s) to import first: a.b[,c.d] (not needed to watch).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option(
    "--token",
    envvar="JOBMASTER_DASHBOARD_TOKEN",
    help="Every request must give it (Authorization: Bearer, or the login form); needed to listen on a "
    "non-loopback address. Else $JOBMASTER_DASHBOARD_TOKEN.",
)
@click.option(
    "--secret",
    envvar="JOBMASTER_DASHBOARD_SECRET",
    help="Key of the forms' CSRF tokens: the same for every process serving the dashboard (else "
    "$JOBMASTER_DASHBOARD_SECRET, else generated).",
)
@click.option(
    "--origin",
    "origins",
    multiple=True,
    envvar="JOBMASTER_DASHBOARD_ORIGINS",
    help="Another origin its forms may be posted from (e.g. https://ops.example.com, the public one "
    "behind a proxy that rewrites Host without X-Forwarded-Host); repeatable. Else "
    "$JOBMASTER_DASHBOARD_ORIGINS (separated by spaces).",
)
@click.option("--read-only", is_flag=True, help="Show, never cancel or retry.")
@pass_settings
def dashboard(
    settings: Settings,
    apps: tuple[str, ...],
    host: str,
    port: int,
    token: str | None,
    secret: str | None,
    origins: tuple[str, ...],
    read_only: bool,
) -> None:
    """Serve the web dashboard: queue, workers, charts, jobs, live updates, /metrics."""
    token = token or None
    if not is_loopback_address(host) and token is None:
        raise click.ClickException(
            f"refusing to listen on {host} without a token: anybody who can reach it could see and cancel "
            "jobs; give --token (or JOBMASTER_DASHBOARD_TOKEN), or listen on 127.0.0.1"
        )
    try:
        import uvicorn

        from ..web import create_app
        from ..web.security import parse_origin
        from ..web.server import Server
    except ImportError as exc:
        raise click.ClickException(
            f"the dashboard needs the web extra: pip install 'jobmaster_async[web]' ({exc})"
        ) from None
    for origin in origins:
        if parse_origin(origin) is None:
            raise click.ClickException(f"--origin {origin!r} is not an origin: say https://name[:port]")

    async def serve() -> None:
        async with settings.master(apps) as jm:
            await check_deployed(jm, settings.deploy_hint(apps))
            app = create_app(jm, read_only=read_only, token=token, secret=secret, origins=origins)
            shown = f"[{host}]" if ":" in host else host
            click.echo(
                f"dashboard of schema {jm.schema} on http://{shown}:{port}/" + (" (read-only)" if read_only else "")
            )
            config = uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level="info" if settings.verbose else "warning",
                lifespan="on",
                timeout_graceful_shutdown=3,
                proxy_headers=False,
            )
            await Server(config, app).serve()

    with settings.errors():
        run(serve())

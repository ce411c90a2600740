"""A periodic task for worker processes (type key ``cron_tasks``): imported by the processes of
tests/test_periodic.py only (``--app tests.cron_tasks``), never by the test process, so that no
other test deploys its schedule."""

from __future__ import annotations

from jobmaster_async import Cron, task


@task(cron=Cron("* * * * * *", arguments={"label": "every second"}))
async def every_second(label: str) -> str:
    return label

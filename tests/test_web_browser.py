"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright (its own
browser builds are never downloaded). Live updates without a reload, a failed job retried from
its page until it completes, hostile arguments shown as text. Screenshots of the overview and of
a job page are taken every run; with JOBMASTER_SCREENSHOTS=1 they are copied to docs/.

Skipped, with the reason, where Chromium is not installed (apt-get install chromium); never in CI,
whose .ci/run installs it (there a missing browser fails the tests)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier
from jobmaster_async.events import Claimed
from jobmaster_async.web import Dashboard
from tests.conftest import worker
from tests.polling import within
from tests.web_support import served

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS = Path(__file__).parent.parent / "docs"
T = "tasks_for_tests"
#: How long an expectation may take before the test fails (a deadline, not a measure).
DEADLINE_MS = 30_000

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium before the tests")
    pytest.skip(
        f"Chromium is not installed ({CHROMIUM}): apt-get install chromium (CI's .ci/run does)", allow_module_level=True
    )

from playwright.async_api import BrowserContext, ConsoleMessage, Page, async_playwright, expect  # noqa: E402

expect.set_options(timeout=DEADLINE_MS)


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            await context.close()


class Watched:
    """A page, with the dialogs it opened and the errors its console reported."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self._dismissing: list[asyncio.Future[None]] = []
        page.on("dialog", self._dialog)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        self._dismissing.append(asyncio.ensure_future(dialog.dismiss()))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    async def live(self) -> None:
        """Waits until the page's live updates are connected."""
        await expect(self.page.locator("#live")).to_have_attribute("data-state", "live")


async def watched(browser: BrowserContext) -> Watched:
    return Watched(await browser.new_page())


async def test_the_overview_updates_without_a_reload(
    jm: JobMaster, dash: Dashboard, browser: BrowserContext, conn: asyncpg.Connection
) -> None:
    async with served(dash) as url:
        tab = await watched(browser)
        await tab.page.goto(f"{url}/")
        await tab.live()
        await expect(tab.page.locator('tr[data-task="tasks_for_tests.add"]')).to_have_count(0)
        await tab.page.evaluate("window.sameDocument = true")
        # another client inserts a job, through SQL
        await conn.fetchval(f"SELECT {quote_identifier(jm.schema)}.add_job($1, 'add', 0, $2::json)", T, '{"a": 1}')
        row = tab.page.locator('tr[data-task="tasks_for_tests.add"]')
        await expect(row).to_be_visible()
        await expect(row.locator('[data-status="waiting"]')).to_have_text("1")
        await expect(tab.page.locator('[data-count="waiting"]')).to_have_text("1")
        assert await tab.page.evaluate("window.sameDocument") is True  # not reloaded
        assert tab.errors == [] and tab.dialogs == []


async def test_a_failed_job_is_retried_from_its_page_until_it_completes(
    jm: JobMaster, dash: Dashboard, browser: BrowserContext, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    job_id = await jm.insert_job("web_support", "fails_until", 0, {"path": str(marker)})
    assert await jm.run() == 1
    async with served(dash) as url:
        tab = await watched(browser)
        await tab.page.goto(f"{url}/jobs/{job_id.hex[-12:]}")  # the short id the list shows
        assert tab.page.url == f"{url}/jobs/{job_id}"
        await tab.live()
        await expect(tab.page.locator("h1 .badge")).to_have_text("failed")
        await expect(tab.page.locator("#traceback")).to_contain_text("RuntimeError")
        await expect(tab.page.locator("#traceback")).to_contain_text("is not there yet")
        marker.touch()
        async with worker(jm):
            await tab.page.click("#retry")
            await expect(tab.page.locator(".banner.info")).to_have_text("Queued again.")
            await tab.live()
            await tab.page.evaluate("window.sameDocument = true")
            await expect(tab.page.locator("h1 .badge")).to_have_text("complete")
            await expect(tab.page.locator("#result")).to_have_text('"there"')
            assert await tab.page.evaluate("window.sameDocument") is True  # updated live
        await expect(tab.page.locator("#history .reason").last).to_have_text("completed")
        await expect(tab.page.locator("#history .reason", has_text="requeued")).to_have_count(1)
        assert tab.errors == [] and tab.dialogs == []


async def test_a_script_in_an_argument_is_text_and_runs_nothing(
    jm: JobMaster, dash: Dashboard, browser: BrowserContext
) -> None:
    hostile = (
        "<script>window.pwned = 'script'; alert('script')</script>"
        "<img src=x onerror=\"window.pwned = 'img'; alert('img')\">"
        "</pre></code><svg onload=\"alert('svg')\">"
    )
    job_id = await jm.insert_job(T, "explode", 0, {"reason": hostile})
    await jm.run()
    async with served(dash) as url:
        tab = await watched(browser)
        for path in (f"/jobs/{job_id}", "/jobs", f"/jobs?q={job_id.hex[-6:]}", "/"):
            await tab.page.goto(f"{url}{path}")
            await tab.live()
            assert await tab.page.evaluate("window.pwned") is None, path
        await tab.page.goto(f"{url}/jobs/{job_id}")
        await expect(tab.page.locator("#arguments")).to_contain_text(json.dumps(hostile))
        await expect(tab.page.locator(".error-line")).to_contain_text("exploded: <script>window.pwned")
        assert await tab.page.locator("#arguments script, #arguments img, .error-line img").count() == 0
        assert await tab.page.evaluate("window.pwned") is None
        assert tab.dialogs == []


async def test_another_site_cannot_post_the_form_even_with_its_token(
    jm: JobMaster, dash: Dashboard, browser: BrowserContext
) -> None:
    """Issue 24: a page of another site whose form posts to the dashboard, with a valid CSRF token
    of this very browser, is refused (403, saying why): the browser names the other site in
    Origin. The dashboard's own form still works."""
    job_id = await jm.insert_job(T, "add", 0, {"a": 1})
    async with served(dash) as url:
        tab = await watched(browser)
        await tab.page.goto(f"{url}/jobs/{job_id}")
        token = await tab.page.locator('#cancel >> xpath=.. >> input[name="csrf_token"]').get_attribute("value")
        assert token
        attack = (
            f'<!doctype html><form id="f" method="post" action="{url}/jobs/{job_id}/cancel">'
            f'<input type="hidden" name="csrf_token" value="{token}"></form>'
            '<script>document.getElementById("f").submit()</script>'
        )

        async def evil(route: Any) -> None:
            await route.fulfill(status=200, content_type="text/html", body=attack)

        await browser.route("http://evil.example/**", evil)
        attacked = await browser.new_page()
        async with attacked.expect_response(f"{url}/jobs/{job_id}/cancel") as answer:
            await attacked.goto("http://evil.example/")
        response = await answer.value
        assert response.status == 403
        assert (await response.request.all_headers())["origin"] == "http://evil.example"
        await expect(attacked.locator("h1")).to_contain_text("cross-site")
        await expect(attacked.locator(".problem")).to_contain_text("http://evil.example")
        assert (await jm.get_job(job_id)).status == "waiting"  # type: ignore[union-attr]
        own = await browser.new_page()  # confirms the "Cancel this job?" question
        own.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await own.goto(f"{url}/jobs/{job_id}")
        await own.click("#cancel")
        await expect(own.locator(".banner.info")).to_have_text("Cancelled.")
        assert (await jm.get_job(job_id)).status == "cancelled"  # type: ignore[union-attr]


async def _staged_hour(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """An hour of history for the pictures: jobs of several tasks run now, some failing, their
    history then spread over the last hour (staged: the tests do not wait an hour)."""
    await jm.insert_jobs(T, "add", 0, [{"a": i} for i in range(900)])
    await jm.insert_jobs(T, "multiply", 0, [{"x": i, "y": 2} for i in range(300)])
    await jm.insert_jobs(T, "explode", 0, [{"reason": f"bad input {i}"} for i in range(25)])
    await jm.insert_jobs(T, "flaky", 0, [{"key": f"k{i}"} for i in range(6)])
    for n in (10, 11, 12):
        await jm.insert_job(T, "doubled", 0, {"n": n})
    await jm.run()
    schema = quote_identifier(jm.schema)
    await conn.execute(
        f"""UPDATE {schema}.job_events AS e
               SET at = e.at - pg_catalog.make_interval(secs => (pg_catalog.abs(pg_catalog.hashtext(e.job_id::text))
                                                                  % 3500) + 30)"""
    )


async def test_screenshots(jm: JobMaster, dash: Dashboard, browser: BrowserContext, conn: asyncpg.Connection) -> None:
    """The overview and a job page as a person sees them (copied to docs/ with
    JOBMASTER_SCREENSHOTS=1); the pages run without a console error."""
    await _staged_hour(jm, conn)
    # the job pictured: it failed, and so did the jobs that needed it
    top = await jm.insert_job(T, "top_of_broken", 0, {"key": "invoice-42"})
    await jm.run()
    # a backlog, and two jobs running while pictured
    await jm.insert_jobs(T, "add", 0, [{"a": i} for i in range(1000, 1180)])
    await jm.insert_jobs(T, "multiply", 2, [{"x": i, "y": 3} for i in range(40)])
    await jm.insert_job(T, "doubled", 0, {"n": 99})
    await jm.insert_jobs(T, "add", 0, [{"a": i} for i in range(2000, 2012)], run_at=timedelta(minutes=20))
    await jm.insert_jobs(T, "sleepy", 5, [{"seconds": 600 + i} for i in range(2)])
    [above] = await jm.dependencies(top)
    [broken] = await jm.dependencies(above["job_id"])
    # its traceback names files by their place in the repository, not on this machine
    await conn.execute(
        f"UPDATE {quote_identifier(jm.schema)}.jobs SET traceback = pg_catalog.replace(traceback, $1, '')"
        " WHERE job_id = $2",
        f"{Path(__file__).parent.parent}{os.sep}",
        broken["job_id"],
    )
    async with served(dash) as url, worker(jm, 2, grace_period=0.1):
        await within(jm.events.wait_for(Claimed, 2), "the worker to claim the two sleepy jobs")
        tab = await watched(browser)
        await tab.page.goto(f"{url}/")
        await tab.live()
        await expect(tab.page.locator("table.data").first).to_be_visible()
        overview = await tab.page.screenshot(full_page=True)
        await tab.page.goto(f"{url}/jobs/{broken['job_id']}")
        await tab.live()
        await expect(tab.page.locator(".tree a")).to_have_count(2)
        job = await tab.page.screenshot(full_page=True)
        await tab.page.set_viewport_size({"width": 390, "height": 844})
        await tab.page.emulate_media(color_scheme="dark")
        await tab.page.goto(f"{url}/")
        await tab.live()
        phone = await tab.page.screenshot(full_page=False)
        assert tab.errors == []
    pictures = {"dashboard-overview.png": overview, "dashboard-job.png": job, "dashboard-phone.png": phone}
    if os.environ.get("JOBMASTER_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        for name, data in pictures.items():
            (DOCS / name).write_bytes(data)
    for data in pictures.values():
        assert data.startswith(b"\x89PNG")

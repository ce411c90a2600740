"""The dashboard over HTTP (jobmaster_async.web), against the test server: every route, the
token (bearer, login cookie), the loopback Host rule, CSRF, read-only (also with a role that may
only read), /metrics, mounting under a prefix, ids by prefix, live events, and the command."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Mount

from jobmaster_async import Cron, JobMaster, task
from jobmaster_async.cli import main
from jobmaster_async.cli.dashboard import is_loopback_address
from jobmaster_async.db.sql import quote_identifier
from jobmaster_async.tasks import registry
from jobmaster_async.web import Dashboard, create_app
from jobmaster_async.web import job_pages as web_pages
from jobmaster_async.web.live import Snapshot
from jobmaster_async.web.security import CSRF_AGE, fingerprint, host_name, is_loopback_host, parse_origin
from tests.conftest import SECRET
from tests.polling import until
from tests.web_support import client, csrf_of, served

T = "tasks_for_tests"
TOKEN = "a-token-long-enough-for-the-tests"


async def finished_jobs(jm: JobMaster) -> dict[str, uuid.UUID]:
    """A completed, a failed (after retries), a cancelled and a waiting job, and a dependency pair."""
    ids = {
        "complete": await jm.insert_job(T, "add", 0, {"a": 1, "b": 2}),
        "failed": await jm.insert_job(T, "flaky", 0, {"key": "k"}),
    }
    await jm.run()
    ids["cancelled"] = await jm.insert_job(T, "add", 0, {"a": 5})
    await jm.cancel(ids["cancelled"])
    ids["doubled"] = await jm.insert_job(T, "doubled", 0, {"n": 21})
    [dependency] = await jm.dependencies(ids["doubled"])
    ids["base"] = dependency["job_id"]
    ids["waiting"] = await jm.insert_job(T, "add", 3, {"a": 7})
    return ids


# -- pages ---------------------------------------------------------------------------------------


async def test_every_page_renders(jm: JobMaster, dash: Dashboard) -> None:
    ids = await finished_jobs(jm)
    async with client(dash) as http:
        overview = await http.get("/")
        assert overview.status_code == 200
        assert 'data-task="tasks_for_tests.add"' in overview.text and "Throughput" in overview.text
        assert "<svg" in overview.text and "Workers" in overview.text
        listing = await http.get("/jobs")
        assert listing.status_code == 200
        for job_id in ids.values():
            assert str(job_id) in listing.text
        for path in ("/static/dashboard.css", "/static/dashboard.js"):
            assert (await http.get(path)).status_code == 200
        assert (await http.get("/metrics")).status_code == 200
        assert (await http.get("/no/such/page")).status_code == 404
        assert (await http.get("/jobs?status=nonsense")).status_code == 400
        assert (await http.get("/jobs?before=nonsense")).status_code == 400
        for name, job_id in ids.items():
            page = await http.get(f"/jobs/{job_id}")
            assert page.status_code == 200, name
            assert page.headers["content-security-policy"].startswith("default-src 'self'")


async def test_the_job_page_shows_everything(jm: JobMaster, dash: Dashboard) -> None:
    ids = await finished_jobs(jm)
    async with client(dash) as http:
        failed = (await http.get(f"/jobs/{ids['failed']}")).text
        assert 'id="traceback"' in failed and "RuntimeError" in failed and "flaky k" in failed
        assert "3 of 3" in failed  # attempts
        assert failed.count('class="ev-running"') == 3 and "retried" in failed
        assert 'id="retry"' in failed and 'id="cancel"' not in failed
        complete = (await http.get(f"/jobs/{ids['complete']}")).text
        assert 'id="result"' in complete and ">3</pre>" in complete
        assert "&#34;a&#34;: 1" in complete and "completed" in complete
        waiting = (await http.get(f"/jobs/{ids['waiting']}")).text
        assert 'id="cancel"' in waiting and 'id="retry"' not in waiting
        # dependencies both ways, with links
        doubled = (await http.get(f"/jobs/{ids['doubled']}")).text
        assert f'href="/jobs/{ids["base"]}"' in doubled and "tasks_for_tests.base" in doubled
        base = (await http.get(f"/jobs/{ids['base']}")).text
        assert f'href="/jobs/{ids["doubled"]}"' in base and "tasks_for_tests.doubled" in base


async def test_a_job_id_by_any_unique_part(jm: JobMaster, dash: Dashboard) -> None:
    first = await jm.insert_job(T, "add", 0, {"a": 1})
    await jm.insert_job(T, "add", 0, {"a": 2})
    async with client(dash) as http:
        for part in (first.hex[-12:], str(first)[:18], str(first).upper(), first.hex):
            moved = await http.get(f"/jobs/{part}")
            assert moved.status_code == 302, part
            assert moved.headers["location"] == f"/jobs/{first}"
        # the first digits are those of the time: every job of this test has them
        ambiguous = await http.get(f"/jobs/{first.hex[:4]}")
        assert ambiguous.status_code == 300
        assert "More than one job" in ambiguous.text and f'href="/jobs/{first}"' in ambiguous.text
        missing = await http.get("/jobs/ffffffffffff")
        assert missing.status_code == 404 and "no job id starts or ends with" in missing.text
        assert (await http.get(f"/jobs/{uuid.uuid4()}")).status_code == 404
        bad = await http.get("/jobs/not-an-id")
        assert bad.status_code == 404 and "not a job id" in bad.text
        # the search box takes an id as the list shows it
        found = await http.get("/jobs", params={"q": first.hex[-12:]})
        assert found.status_code == 302 and found.headers["location"] == f"/jobs/{first}"


def _older(page: str) -> str | None:
    found = re.search(r'href="(/jobs\?[^"]*before=[^"]+)" rel="next"', page)
    return found.group(1).replace("&amp;", "&") if found else None


def _listed(page: str) -> list[str]:
    return re.findall(r'<td class="c-id"><a class="mono" href="/jobs/([0-9a-f-]{36})"', page)


async def test_the_list_pages_newest_first(jm: JobMaster, dash: Dashboard) -> None:
    ids = []
    for start in range(0, 120, 40):
        ids += await jm.insert_jobs(T, "add", 0, [{"a": i} for i in range(start, start + 40)])
    seen: list[str] = []
    async with client(dash) as http:
        path: str | None = "/jobs"
        while path is not None:
            page = (await http.get(path)).text
            listed = _listed(page)
            assert len(listed) <= web_pages.PAGE
            seen += listed
            path = _older(page)
    assert seen == sorted((str(i) for i in ids), reverse=True)


async def test_filters(jm: JobMaster, dash: Dashboard) -> None:
    ids = await finished_jobs(jm)
    async with client(dash) as http:
        failed = _listed((await http.get("/jobs", params={"status": "failed"})).text)
        assert failed == [str(ids["failed"])]
        waiting = _listed((await http.get("/jobs", params={"status": "waiting"})).text)
        assert set(waiting) == {str(ids["waiting"]), str(ids["base"])}
        flaky = _listed((await http.get("/jobs", params={"task": f"{T}.flaky"})).text)
        assert flaky == [str(ids["failed"])]
        # text: in arguments, messages, the task's name
        assert _listed((await http.get("/jobs", params={"q": '"a": 7'})).text) == [str(ids["waiting"])]
        assert _listed((await http.get("/jobs", params={"q": "flaky k"})).text) == [str(ids["failed"])]
        assert set(_listed((await http.get("/jobs", params={"q": "doubled"})).text)) == {str(ids["doubled"])}
        # LIKE's wildcards are text
        assert _listed((await http.get("/jobs", params={"q": "%"})).text) == []
        combined = {"status": "complete", "task": f"{T}.add"}
        assert _listed((await http.get("/jobs", params=combined)).text) == [str(ids["complete"])]


async def test_a_rare_match_is_searched_for_a_bounded_number_of_jobs_at_a_time(
    jm: JobMaster, dash: Dashboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web_pages, "SCAN", 10)
    rare = await jm.insert_job(T, "multiply", 0, {"x": 2, "y": 3})
    await jm.insert_jobs(T, "add", 0, [{"a": i} for i in range(25)])
    async with client(dash) as http:
        page = (await http.get("/jobs", params={"task": f"{T}.multiply"})).text
        assert _listed(page) == [] and "No match among the 10 jobs looked at" in page
        hops = 0
        path = _older(page)
        while path is not None and not _listed(page):
            page = (await http.get(path)).text
            hops += 1
            path = _older(page)
        assert _listed(page) == [str(rare)] and hops == 2


async def test_the_overview_lists_the_schedules(jm: JobMaster, dash: Dashboard) -> None:
    async with client(dash) as http:
        assert "Schedules" not in (await http.get("/")).text  # none deployed: no panel

    nightly = Cron("0 3 * * *", arguments={"path": "exports/nightly.csv"}, timezone="Europe/Paris")

    @task(type_key="dashboard_checks", cron=nightly)
    async def nightly_export(path: str) -> None: ...

    try:
        await jm.deploy()
        dash.broadcaster._schedules_read_at = None  # as the deploy's NOTIFY would, were it listening
        await dash.broadcaster.snapshot(max_age=0)  # not the snapshot of the last second
        async with client(dash) as http:
            page = (await http.get("/")).text
    finally:
        registry.remove("dashboard_checks", "nightly_export")
    assert "Schedules" in page and "dashboard_checks.nightly_export" in page
    assert "0 3 * * *" in page and "Europe/Paris" in page and "never" in page


async def test_an_unreachable_database_is_a_503_page() -> None:
    nowhere = JobMaster("postgresql://postgres@127.0.0.1:1/postgres", connection_timeout=2)
    app = create_app(nowhere, secret=SECRET)
    try:
        async with client(app) as http:
            for path in ("/", "/jobs", f"/jobs/{uuid.uuid4()}", "/metrics"):
                page = await http.get(path)
                assert page.status_code == 503, path
                assert "cannot" in page.text.lower() or "unreachable" in page.text.lower(), path
    finally:
        await app.aclose()
        await nowhere.close()


async def test_the_list_and_the_history_reads_use_their_indexes(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """EXPLAIN guards with 60,000 finished jobs: a page of the list walks the primary key from where
    it starts, even in a generic plan; the charts' and the metrics' reads of recent history use the
    index on job_events (at) (migration 0014)."""
    schema = quote_identifier(jm.schema)
    for start in range(0, 60_000, 10_000):
        await jm.insert_jobs(T, "add", 0, [{"a": i} for i in range(start, start + 10_000)])
    await conn.execute(f"UPDATE {schema}.jobs SET status = 'complete', finished_at = now()")
    await conn.execute(f"UPDATE {schema}.job_events SET at = at - interval '1 day'")
    await jm.insert_job(T, "add", 0, {"a": -1})
    await conn.execute(f"VACUUM ANALYZE {schema}.jobs, {schema}.job_events")
    statements = jm.sql.dashboard
    middle = await conn.fetchval(f"SELECT job_id FROM {schema}.jobs ORDER BY job_id OFFSET 30000 LIMIT 1")

    async def plan(statement: str, *args: object, mode: str = "force_generic_plan") -> str:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
            rows = await conn.fetch(f"EXPLAIN {statement}", *args)
        return "\n".join(row[0] for row in rows)

    for before in (None, middle):
        page = await plan(statements["jobs_page"], before, 20_000, "failed", None, None, 160, 51)
        assert "Index Scan Backward using jobs_pkey" in page and "Index Cond: (job_id <" in page, page
        assert "Seq Scan on jobs" not in page and "Sort" not in page, page
    for name in ("chart_hour", "chart_recent"):
        chart = await plan(statements[name])
        assert "job_events_at_idx" in chart and "Seq Scan on job_events" not in chart, chart
    window = await plan(
        statements["metrics_window"],
        await jm.clock(timedelta(seconds=30)),
        timedelta(0),
        mode="force_custom_plan",
    )
    assert "job_events_at_idx" in window and "Seq Scan on job_events" not in window, window


# -- security ------------------------------------------------------------------------------------


def test_host_names() -> None:
    assert host_name("LocalHost:8080") == "localhost" and host_name("[::1]:9") == "[::1]"
    assert host_name("x:y") is None and host_name("[::1") is None and host_name("") is None
    assert host_name("localhost:²") is None and host_name("[::1]:\u0661") is None and host_name("a:123456") is None
    for good in ("localhost", "127.0.0.1:8080", "[::1]", "[::1]:443"):
        assert is_loopback_host(good), good
    for bad in ("evil.example", "127.0.0.1.evil.example", "localhost.evil.example:80", "[::2]", "0.0.0.0"):
        assert not is_loopback_host(bad), bad
    assert is_loopback_address("127.0.0.1") and is_loopback_address("::1") and is_loopback_address("localhost")
    assert not is_loopback_address("0.0.0.0") and not is_loopback_address("192.0.2.1")


async def test_without_a_token_only_loopback_hosts_are_served(dash: Dashboard) -> None:
    for host in ("127.0.0.1", "localhost:8080", "[::1]:9000"):
        async with client(dash, host=host) as http:
            assert (await http.get("/")).status_code == 200, host
    for host in ("evil.example", "127.0.0.1.nip.example", "dashboard.internal:8080"):
        async with client(dash, host=host) as http:
            refused = await http.get("/")
            assert refused.status_code == 403 and "loopback" in refused.text, host
            assert (await http.get("/metrics")).status_code == 403
            assert (await http.get("/static/dashboard.css")).status_code == 403
    async with client(dash) as http:
        assert (await http.get("/", headers={"host": ""})).status_code == 400


async def test_the_token(jm: JobMaster) -> None:
    app = create_app(jm, token=TOKEN, secret=SECRET)
    try:
        # with a token, any Host is served to whoever has it
        async with client(app, host="dashboard.example") as http:
            refused = await http.get("/", headers={"accept": "text/html"})
            assert refused.status_code == 401 and 'name="token"' in refused.text
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert (await http.get("/metrics")).status_code == 401
            assert (await http.get("/events")).status_code == 401
            assert (await http.get("/jobs", headers={"authorization": "Bearer wrong"})).status_code == 401
            assert (await http.get("/jobs", headers={"authorization": f"Bearer {TOKEN}"})).status_code == 200
            assert (await http.get("/metrics", headers={"authorization": f"bearer {TOKEN}"})).status_code == 200
            # what the login form needs is served without it
            assert (await http.get("/static/dashboard.css")).status_code == 200
            assert (await http.get("/login")).status_code == 200
            # the login form
            wrong = await http.post("/login", data={"token": "nope", "next": "/jobs"})
            assert wrong.status_code == 401 and "That is not the token" in wrong.text
            assert "jobmaster_dashboard=" not in wrong.headers.get("set-cookie", "")  # no login cookie
            right = await http.post("/login", data={"token": TOKEN, "next": "/jobs?status=failed"})
            assert right.status_code == 303 and right.headers["location"] == "/jobs?status=failed"
            cookie = right.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
            assert (await http.get("/jobs")).status_code == 200  # the client keeps the cookie
            # never sent elsewhere after logging in
            away = await http.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
            assert away.headers["location"] == "/"
            out = await http.post("/logout")
            assert out.status_code == 303
            assert (await http.get("/jobs")).status_code == 401
        async with client(app, host="127.0.0.1", cookies={"jobmaster_dashboard": "forged"}) as http:
            assert (await http.get("/")).status_code == 401
    finally:
        await app.aclose()


async def test_actions_need_the_csrf_token(jm: JobMaster, dash: Dashboard) -> None:
    job_id = await jm.insert_job(T, "add", 0, {"a": 1})
    async with client(dash) as http:
        page = (await http.get(f"/jobs/{job_id}")).text
        token = csrf_of(page)
        for data in ({}, {"csrf_token": "wrong"}, {"csrf_token": token + "x"}):
            refused = await http.post(f"/jobs/{job_id}/cancel", data=data)
            assert refused.status_code == 403 and "CSRF" in refused.text
        assert (await jm.get_job(job_id)).status == "waiting"  # type: ignore[union-attr]
        done = await http.post(f"/jobs/{job_id}/cancel", data={"csrf_token": token})
        assert done.status_code == 303 and done.headers["location"] == f"/jobs/{job_id}?done=cancelled"
        assert (await jm.get_job(job_id)).status == "cancelled"  # type: ignore[union-attr]
        assert "Cancelled." in (await http.get(done.headers["location"])).text
        again = await http.post(f"/jobs/{job_id}/cancel", data={"csrf_token": token})
        assert again.headers["location"].endswith("?done=finished")
        retried = await http.post(f"/jobs/{job_id}/retry", data={"csrf_token": token})
        assert retried.status_code == 303 and retried.headers["location"] == f"/jobs/{job_id}?done=retried"
        assert (await jm.get_job(job_id)).status == "waiting"  # type: ignore[union-attr]
        not_retryable = await http.post(f"/jobs/{job_id}/retry", data={"csrf_token": token})
        assert not_retryable.status_code == 409 and "only failed or cancelled jobs" in not_retryable.text
        unknown = uuid.uuid4()
        assert (await http.post(f"/jobs/{unknown}/cancel", data={"csrf_token": token})).status_code == 404
        # GET does not act
        assert (await http.get(f"/jobs/{job_id}/cancel")).status_code == 405
        browser = http.cookies
    # another process with the same secret takes the token (from the same browser); one with
    # another secret does not
    same = create_app(jm, secret=SECRET)
    other = create_app(jm, secret="another secret")
    try:
        async with client(same, cookies=browser) as http:
            assert (await http.post(f"/jobs/{job_id}/cancel", data={"csrf_token": token})).status_code == 303
        async with client(other, cookies=browser) as http:
            assert (await http.post(f"/jobs/{job_id}/retry", data={"csrf_token": token})).status_code == 403
    finally:
        await same.aclose()
        await other.aclose()


async def test_csrf_with_a_token(jm: JobMaster) -> None:
    """A logged-in browser's forms carry a token bound to its cookie; a bearer client needs none
    (no browser sends that header on its own)."""
    job_id = await jm.insert_job(T, "add", 0, {"a": 1})
    app = create_app(jm, token=TOKEN, secret=SECRET)
    try:
        async with client(app) as http:
            await http.post("/login", data={"token": TOKEN})
            page = (await http.get(f"/jobs/{job_id}")).text
            assert (await http.post(f"/jobs/{job_id}/cancel", data={})).status_code == 403
            assert (await http.post(f"/jobs/{job_id}/cancel", data={"csrf_token": csrf_of(page)})).status_code == 303
        async with client(app, headers={"authorization": f"Bearer {TOKEN}"}) as http:
            assert (await http.post(f"/jobs/{job_id}/retry")).status_code == 303
            assert (await jm.get_job(job_id)).status == "waiting"  # type: ignore[union-attr]
    finally:
        await app.aclose()


async def test_read_only(jm: JobMaster) -> None:
    failed = await jm.insert_job(T, "explode", 0, {"reason": "r"})
    await jm.run()
    waiting = await jm.insert_job(T, "add", 0, {"a": 1})
    app = create_app(jm, read_only=True, secret=SECRET)
    try:
        async with client(app) as http:
            for job_id in (failed, waiting):
                page = (await http.get(f"/jobs/{job_id}")).text
                assert "read-only" in page and 'id="retry"' not in page and 'id="cancel"' not in page
            for action, job_id in (("retry", failed), ("cancel", waiting)):
                refused = await http.post(f"/jobs/{job_id}/{action}", data={"csrf_token": "any"})
                assert refused.status_code == 403 and "read-only" in refused.text
        assert (await jm.get_job(failed)).status == "failed"  # type: ignore[union-attr]
        assert (await jm.get_job(waiting)).status == "waiting"  # type: ignore[union-attr]
    finally:
        await app.aclose()


async def test_read_only_with_a_role_that_may_only_read(jm: JobMaster, conn: asyncpg.Connection, dsn: str) -> None:
    """The grants the README gives a read-only dashboard are enough for every page."""
    ids = await finished_jobs(jm)
    role = f"dashboard_{uuid.uuid4().hex[:8]}"
    schema = quote_identifier(jm.schema)
    await conn.execute(f"CREATE ROLE {role} LOGIN")
    await conn.execute(
        f"GRANT USAGE ON SCHEMA {schema} TO {role};"
        f" GRANT SELECT ON {schema}.jobs, {schema}.tasks, {schema}.job_events, {schema}.job_dependencies,"
        f" {schema}.workers, {schema}.schedules TO {role};"
        f" GRANT SELECT ON SEQUENCE {schema}.job_events_event_id_seq TO {role}"
    )
    reader = JobMaster(dsn, schema=jm.schema, connect_kwargs={"user": role})
    app = create_app(reader, read_only=True, secret=SECRET)
    try:
        async with client(app) as http:
            assert (await http.get("/")).status_code == 200
            assert (await app.broadcaster.snapshot()).history_mark is not None  # the mark is readable
            assert (await http.get("/jobs")).status_code == 200
            assert (await http.get("/jobs", params={"q": "flaky"})).status_code == 200
            for job_id in ids.values():
                assert (await http.get(f"/jobs/{job_id}")).status_code == 200
            assert (await http.get(f"/jobs/{ids['failed'].hex[-12:]}")).status_code == 302
            assert (await http.get("/metrics")).status_code == 200
            assert (await http.get("/metrics")).status_code == 200
            refused = await http.post(f"/jobs/{ids['failed']}/retry", data={"csrf_token": "x"})
            assert refused.status_code == 403
        # and it can change nothing
        async with reader.connection() as c:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await c.execute(f"SELECT {schema}.cancel_job($1)", ids["waiting"])
    finally:
        await app.aclose()
        await reader.close()
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


async def test_every_job_value_is_escaped(jm: JobMaster, dash: Dashboard) -> None:
    hostile = "<script>alert('x')</script><img src=x onerror=alert(1)>"
    job_id = await jm.insert_job(T, "explode", 0, {"reason": hostile})
    await jm.run()
    async with client(dash) as http:
        for path in (f"/jobs/{job_id}", "/jobs", f"/jobs?q={hostile}"):
            page = (await http.get(path)).text
            assert "<script>alert" not in page and "<img src=x" not in page, path
            assert "&lt;script&gt;alert(" in page, path


# -- metrics -------------------------------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics(jm: JobMaster, dash: Dashboard) -> None:
    dash.metrics.lag = timedelta(0)  # count what committed up to the scrape (the tests wait for nothing)
    await jm.insert_jobs(T, "add", 0, [{"a": 1}, {"a": 2}])
    async with client(dash) as http:
        first = await http.get("/metrics")
        assert first.status_code == 200 and first.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = _samples(first.text)
        add = {("type_key", T), ("task_key", "add")}
        assert samples[("jobmaster_jobs", frozenset({*add, ("status", "waiting")}))] == 2
        assert samples[("jobmaster_jobs", frozenset({*add, ("status", "running")}))] == 0
        # counters start at zero with the first scrape
        assert samples[("jobmaster_job_outcomes_total", frozenset({*add, ("outcome", "completed")}))] == 0
        await jm.insert_job(T, "flaky", 0, {"key": "m"})  # fails, retried twice, fails for good
        await jm.insert_job(T, "add", 0, {"a": 3})
        await jm.cancel(await jm.insert_job(T, "add", 0, {"a": 4}))
        assert await jm.run() == 6
        samples = _samples((await http.get("/metrics")).text)
        flaky = {("type_key", T), ("task_key", "flaky")}

        def outcome(task: set[tuple[str, str]], name: str) -> float:
            return samples[("jobmaster_job_outcomes_total", frozenset({*task, ("outcome", name)}))]

        assert outcome(add, "completed") == 3 and outcome(add, "cancelled") == 1
        assert outcome(flaky, "retried") == 2 and outcome(flaky, "failed") == 1
        assert outcome(flaky, "completed") == 0 and outcome(add, "rescued") == 0
        assert samples[("jobmaster_jobs", frozenset({*add, ("status", "waiting")}))] == 0
        assert samples[("jobmaster_job_run_seconds_count", frozenset(add))] == 3
        assert samples[("jobmaster_job_run_seconds_count", frozenset(flaky))] == 3
        assert samples[("jobmaster_job_run_seconds_bucket", frozenset({*flaky, ("le", "+Inf")}))] == 3
        assert samples[("jobmaster_job_start_delay_seconds_count", frozenset(add))] == 3
        assert samples[("jobmaster_job_start_delay_seconds_count", frozenset(flaky))] == 3
        assert samples[("jobmaster_job_start_delay_seconds_sum", frozenset(add))] >= 0
        # each scrape reads only what is new: counters do not count twice
        assert _samples((await http.get("/metrics")).text) == samples
    # the names, in a registry of the dashboard's own
    names = {family.name for family in text_string_to_metric_families(dash.metrics.exposition().decode())}
    assert names == {
        "jobmaster_jobs",
        "jobmaster_job_outcomes",
        "jobmaster_job_run_seconds",
        "jobmaster_job_start_delay_seconds",
    }


async def test_metrics_start_delay_is_from_the_due_time(jm: JobMaster, dash: Dashboard) -> None:
    """The delay of a start is counted from when the job was due: when it was unblocked, or its
    run_at, not when it was inserted."""
    dash.metrics.lag = timedelta(0)
    await dash.metrics.refresh()
    dependent = await jm.insert_job(T, "doubled", 0, {"n": 21})
    scheduled = await jm.insert_job(T, "add", 0, {"a": 1}, run_at=timedelta(seconds=0.2))
    assert await jm.run() >= 2  # base, then doubled (unblocked by it); the scheduled one if due already

    async def ran_the_scheduled_one() -> bool:
        await jm.run()
        return (await jm.get_job(scheduled)).status == "complete"  # type: ignore[union-attr]

    await until(ran_the_scheduled_one, "the scheduled job to fall due and run")
    expected = 0.0
    for job_id in (dependent, scheduled):
        job = await jm.get_job(job_id)
        history = await jm.history(job_id)
        claimed = next(e["at"] for e in history if e["reason"] == "claimed")
        became_waiting = max(e["at"] for e in history if e["status"] == "waiting" and e["at"] <= claimed)
        assert job is not None and job.run_after is not None
        due = max(became_waiting, job.run_after)
        assert due > job.created_at  # unblocked, or scheduled: later than the insert
        expected += (claimed - due).total_seconds()
    await dash.metrics.refresh()
    samples = _samples(dash.metrics.exposition().decode())
    delays = [
        samples[("jobmaster_job_start_delay_seconds_sum", frozenset({("type_key", T), ("task_key", task)}))]
        for task in ("doubled", "add")
    ]
    assert sum(delays) == pytest.approx(expected, abs=1e-3)


# -- mounting ------------------------------------------------------------------------------------


async def test_mounted_under_a_prefix(jm: JobMaster, dash: Dashboard) -> None:
    job_id = await jm.insert_job(T, "add", 0, {"a": 1})
    parent = Starlette(routes=[Mount("/ops", app=dash)])
    async with client(parent) as http:
        overview = await http.get("/ops/")
        assert overview.status_code == 200
        assert 'href="/ops/jobs"' in overview.text and 'href="/ops/static/dashboard.css"' in overview.text
        assert 'data-events="/ops/events?view=overview"' in overview.text
        assert (await http.get("/ops/static/dashboard.js")).status_code == 200
        moved = await http.get(f"/ops/jobs/{job_id.hex[-12:]}")
        assert moved.status_code == 302 and moved.headers["location"] == f"/ops/jobs/{job_id}"
        page = await http.get(f"/ops/jobs/{job_id}")
        assert f'action="/ops/jobs/{job_id}/cancel"' in page.text
        done = await http.post(f"/ops/jobs/{job_id}/cancel", data={"csrf_token": csrf_of(page.text)})
        assert done.status_code == 303 and done.headers["location"] == f"/ops/jobs/{job_id}?done=cancelled"
        assert (await http.get("/ops/metrics")).status_code == 200
        assert (await http.get("/jobs")).status_code == 404  # only under its prefix
    guarded = create_app(jm, token=TOKEN, secret=SECRET)
    try:
        async with client(Starlette(routes=[Mount("/ops", app=guarded)])) as http:
            assert (await http.get("/ops/jobs")).status_code == 401
            assert (await http.get("/ops/static/dashboard.css")).status_code == 200
            login = await http.post("/ops/login", data={"token": TOKEN, "next": "/jobs"})
            assert login.headers["location"] == "/ops/jobs" and "Path=/ops/" in login.headers["set-cookie"]
            assert (await http.get("/ops/jobs")).status_code == 200
    finally:
        await guarded.aclose()


# -- live ----------------------------------------------------------------------------------------


async def _events(response: httpx.Response) -> AsyncIterator[dict[str, object]]:
    """The snapshot events of a stream, parsed."""
    event, data = None, ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            data = line[len("data: ") :]
        elif line == "" and event is not None:
            if event == "snapshot":
                yield json.loads(data)
            event, data = None, ""


async def test_live_events_reach_every_subscriber_from_one_poller(
    jm: JobMaster, dash: Dashboard, conn: asyncpg.Connection
) -> None:
    backends = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
    ours = f"jobmaster_async:{os.getpid()}"
    await dash.broadcaster.snapshot()  # its connection, and the pool's, open
    before = await conn.fetchval(backends, ours)
    async with (
        served(dash) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as http,
        http.stream("GET", "/events", params={"view": "overview"}) as first,
        http.stream("GET", "/events") as second,
        http.stream("GET", "/events") as third,
    ):
        assert first.headers["content-type"].startswith("text/event-stream")
        streams = [_events(first), _events(second), _events(third)]
        snapshots = [await anext(stream) for stream in streams]
        assert dash.broadcaster.subscribers == 3
        assert "regions" in snapshots[0] and "regions" not in snapshots[1]
        assert "tasks_for_tests.add" not in str(snapshots[0]["regions"])
        # another client inserts: every stream hears of it, with no request of its own
        await conn.fetchval(f"SELECT {quote_identifier(jm.schema)}.add_job('{T}', 'add', 0, '{{\"a\": 1}}'::json)")
        while "tasks_for_tests.add" not in str(snapshots[0]["regions"]):
            snapshots[0] = await anext(streams[0])
        for index in (1, 2):
            while snapshots[index]["version"] != snapshots[0]["version"]:
                snapshots[index] = await anext(streams[index])
            assert snapshots[index]["mark"] == snapshots[0]["mark"]
        # no connection of its own for any of them
        assert await conn.fetchval(backends, ours) == before


async def test_the_broadcaster_hands_one_read_to_every_subscriber(jm: JobMaster, dash: Dashboard) -> None:
    broadcaster = dash.broadcaster
    subscriptions = [broadcaster.subscribe() for _ in range(5)]
    firsts = await asyncio.gather(*(anext(s) for s in subscriptions))
    assert len({id(s) for s in firsts}) == 1 and broadcaster.subscribers == 5
    await jm.insert_job(T, "add", 0, {"a": 1})
    # the next snapshot: one read, the same for all five
    nexts = await asyncio.gather(*(anext(s) for s in subscriptions))
    assert len({id(s) for s in nexts}) == 1
    assert nexts[0] is not None and nexts[0].totals["waiting"] == 1
    for subscription in subscriptions:
        await subscription.aclose()  # type: ignore[attr-defined]
    assert broadcaster.subscribers == 0


async def test_the_live_view_survives_its_connection_dying(
    jm: JobMaster, dash: Dashboard, conn: asyncpg.Connection
) -> None:
    broadcaster = dash.broadcaster
    subscription = broadcaster.subscribe()
    first = await anext(subscription)
    assert first is not None and first.error is None
    assert broadcaster._conn is not None
    await conn.execute("SELECT pg_terminate_backend($1)", broadcaster._conn.get_server_pid())
    await jm.insert_job(T, "add", 0, {"a": 1})
    latest: Snapshot | None = first
    while latest is None or latest.error is not None or latest.totals.get("waiting") != 1:
        latest = await anext(subscription)
    await subscription.aclose()  # type: ignore[attr-defined]


# -- the command ---------------------------------------------------------------------------------


def test_the_command_refuses_a_public_address_without_a_token(dsn: str, schema_name: str) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["--dsn", dsn, "--schema", schema_name, "dashboard", "--host", "0.0.0.0"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "refusing to listen on 0.0.0.0 without a token" in lines[0]
    assert runner.invoke(main, ["dashboard", "--help"]).exit_code == 0


def test_the_command_refuses_what_is_not_an_origin(dsn: str, schema_name: str) -> None:
    runner = CliRunner()
    command = ["--dsn", dsn, "--schema", schema_name, "dashboard", "--origin", "https://ok.example"]
    result = runner.invoke(main, [*command, "--origin", "ops.example.com"])
    assert result.exit_code == 1 and "--origin 'ops.example.com' is not an origin" in result.output
    from_env = runner.invoke(main, command[:-2], env={"JOBMASTER_DASHBOARD_ORIGINS": "https://a.example nope"})
    assert from_env.exit_code == 1 and "'nope' is not an origin" in from_env.output


def test_the_command_says_when_the_schema_is_not_deployed(dsn: str, schema_name: str) -> None:
    result = CliRunner().invoke(main, ["--dsn", dsn, "--schema", schema_name, "dashboard", "--port", "0"])
    assert result.exit_code == 1 and "is not deployed" in result.output


def test_the_package_ships_the_templates_and_static_files() -> None:
    import jobmaster_async.web

    folder = Path(jobmaster_async.web.__file__).parent
    assert (folder / "static" / "dashboard.js").exists() and (folder / "templates" / "base.html").exists()


async def test_a_generated_secret_is_never_logged_only_its_fingerprint(
    jm: JobMaster, caplog: pytest.LogCaptureFixture
) -> None:
    """DESIGN 9.1 (issue 24): without a secret, one is generated and kept in memory; the log
    gives its fingerprint and how to give several processes one secret, never the secret. A
    second app given the same secret accepts the first one's tokens."""
    job_id = await jm.insert_job(T, "add", 0, {"a": 77})
    with caplog.at_level(logging.DEBUG, logger="jobmaster_async"):
        generating = create_app(jm)
    secret = generating.guard.secret
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert secret.decode() not in logged and secret.decode()[:8] not in logged
    [record] = [r for r in caplog.records if "no secret given" in r.getMessage()]
    message = record.getMessage()
    assert f"fingerprint {hashlib.sha256(secret).hexdigest()[:8]}" in message
    assert "memory only" in message and "JOBMASTER_DASHBOARD_SECRET" in message and "secret=" in message
    with caplog.at_level(logging.INFO, logger="jobmaster_async"):
        given = create_app(jm, secret=secret)
    assert f"fingerprint {fingerprint(secret)}" in caplog.records[-1].getMessage()
    try:
        async with client(generating) as http:
            token = csrf_of((await http.get(f"/jobs/{job_id}")).text)
            browser = http.cookies
        async with client(given, cookies=browser) as http:
            assert (await http.post(f"/jobs/{job_id}/cancel", data={"csrf_token": token})).status_code == 303
    finally:
        await generating.aclose()
        await given.aclose()
    assert (await jm.get_job(job_id)).status == "cancelled"  # type: ignore[union-attr]


# -- CSRF and Origin (issue 24) ------------------------------------------------------------------


async def test_csrf_tokens_are_per_browser(jm: JobMaster, dash: Dashboard) -> None:
    """A form's token is bound to the browser's id cookie: another browser's token is refused,
    and so is a request without the cookie."""
    job_id = await jm.insert_job(T, "add", 0, {"a": 1})
    async with client(dash) as first, client(dash) as second:
        page = await first.get(f"/jobs/{job_id}")
        cookie = page.headers["set-cookie"]
        assert "jobmaster_browser=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
        assert "Path=/" in cookie
        token = csrf_of(page.text)
        other_token = csrf_of((await second.get(f"/jobs/{job_id}")).text)
        assert first.cookies["jobmaster_browser"] != second.cookies["jobmaster_browser"]
        assert token != other_token
        # the same browser reloading keeps its id
        await first.get("/")
        assert first.cookies["jobmaster_browser"] == page.cookies["jobmaster_browser"]
        for http, given in ((second, token), (first, other_token)):
            refused = await http.post(f"/jobs/{job_id}/cancel", data={"csrf_token": given})
            assert refused.status_code == 403 and "not made for this browser" in refused.text
        async with client(dash) as cookieless:
            refused = await cookieless.post(f"/jobs/{job_id}/cancel", data={"csrf_token": token})
            assert refused.status_code == 403 and "sent no dashboard cookie" in refused.text
        assert (await jm.get_job(job_id)).status == "waiting"  # type: ignore[union-attr]
        done = await first.post(f"/jobs/{job_id}/cancel", data={"csrf_token": token})
        assert done.status_code == 303
        assert (await second.post(f"/jobs/{job_id}/retry", data={"csrf_token": other_token})).status_code == 303


async def test_an_expired_csrf_token_is_refused(
    jm: JobMaster, dash: Dashboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A form's token is good for CSRF_AGE after its page was rendered; every page renders a
    fresh one. The expiry is inside the HMAC: moving it forward breaks the token."""
    job_id = await jm.insert_job(T, "add", 0, {"a": 1})
    async with client(dash) as http:
        token = csrf_of((await http.get(f"/jobs/{job_id}")).text)
        expires, mac = token.split(".")
        assert int(expires) == pytest.approx(time.time() + CSRF_AGE, abs=60)
        later = time.time() + CSRF_AGE + 1
        monkeypatch.setattr(dash.guard, "clock", lambda: later)
        refused = await http.post(f"/jobs/{job_id}/cancel", data={"csrf_token": token})
        assert refused.status_code == 403 and "expired" in refused.text and "reload the page" in refused.text
        extended = f"{int(later) + CSRF_AGE}.{mac}"
        refused = await http.post(f"/jobs/{job_id}/cancel", data={"csrf_token": extended})
        assert refused.status_code == 403 and "not made for this browser" in refused.text
        for malformed in ("nodot", f"x.{mac}", f".{mac}"):
            refused = await http.post(f"/jobs/{job_id}/cancel", data={"csrf_token": malformed})
            assert refused.status_code == 403 and "malformed" in refused.text
        assert (await jm.get_job(job_id)).status == "waiting"  # type: ignore[union-attr]
        fresh = csrf_of((await http.get(f"/jobs/{job_id}")).text)  # reloaded
        assert (await http.post(f"/jobs/{job_id}/cancel", data={"csrf_token": fresh})).status_code == 303


async def test_every_post_must_come_from_the_dashboard_itself(jm: JobMaster, dash: Dashboard) -> None:
    """The Origin (else the Referer) of every POST must be the dashboard's own: another site's is
    refused even with a valid token, and so is a POST that names neither."""
    job_id = await jm.insert_job(T, "add", 0, {"a": 1})
    async with client(dash) as http:
        token = csrf_of((await http.get(f"/jobs/{job_id}")).text)
        cancel = f"/jobs/{job_id}/cancel"
        for origin in ("http://evil.com", "null", "http://127.0.0.1.evil.com", "http://127.0.0.1:8080", "file://"):
            refused = await http.post(cancel, data={"csrf_token": token}, headers={"origin": origin})
            assert refused.status_code == 403, origin
            assert "another site" in refused.text and "cross-site" in refused.text, origin
        evil_referer = {"origin": "", "referer": "http://evil.com/page"}
        assert (await http.post(cancel, data={"csrf_token": token}, headers=evil_referer)).status_code == 403
        assert (await jm.get_job(job_id)).status == "waiting"  # type: ignore[union-attr]
    async with client(dash, origin=None) as http:
        token = csrf_of((await http.get(f"/jobs/{job_id}")).text)
        neither = await http.post(cancel, data={"csrf_token": token})
        assert neither.status_code == 403 and "neither where it comes from" in neither.text
        assert (await jm.get_job(job_id)).status == "waiting"  # type: ignore[union-attr]
        # a Referer of its own (a browser that sends no Origin) is enough
        own_page = {"referer": f"http://127.0.0.1/jobs/{job_id}"}
        assert (await http.post(cancel, data={"csrf_token": token}, headers=own_page)).status_code == 303
        for origin in ("http://127.0.0.1", "http://127.0.0.1:80", "HTTP://127.0.0.1/", "https://127.0.0.1"):
            retried = await http.post(f"/jobs/{job_id}/retry", data={"csrf_token": token}, headers={"origin": origin})
            assert retried.status_code in (303, 409), origin  # accepted (409: not failed any more)
    # the request's own port counts; an https request refuses an http origin
    async with client(dash, host="localhost:8080", origin=None) as http:
        token = csrf_of((await http.get(f"/jobs/{job_id}")).text)
        for origin, status in (("http://localhost:8080", 303), ("http://localhost", 403), ("http://localhost:9", 403)):
            answer = await http.post(cancel, data={"csrf_token": token}, headers={"origin": origin})
            assert answer.status_code == status, origin
    transport = httpx.ASGITransport(app=dash)
    async with httpx.AsyncClient(transport=transport, base_url="https://127.0.0.1") as https:
        token = csrf_of((await https.get(f"/jobs/{job_id}")).text)
        downgraded = await https.post(cancel, data={"csrf_token": token}, headers={"origin": "http://127.0.0.1"})
        assert downgraded.status_code == 403
        own = await https.post(cancel, data={"csrf_token": token}, headers={"origin": "https://127.0.0.1"})
        assert own.status_code == 303


async def test_behind_a_proxy_the_origin_is_its_public_one(jm: JobMaster) -> None:
    """Behind a proxy that rewrites the Host header, the origin the browser posts from is the
    proxy's: taken from X-Forwarded-Host (and -Proto), or given to create_app(origins=...).
    Under a prefix, the browser cookie is scoped to it."""
    job_id = await jm.insert_job(T, "add", 0, {"a": 1})
    app = create_app(jm, token=TOKEN, secret=SECRET, origins=["https://ops.example.com:8443"])
    public = "https://dash.example.com"
    try:
        parent = Starlette(routes=[Mount("/ops", app=app)])
        async with client(parent, host="10.0.0.5:8080", origin=public) as http:
            forwarded = {"x-forwarded-host": "dash.example.com", "x-forwarded-proto": "https"}
            refused = await http.post("/ops/login", data={"token": TOKEN})  # the Host is not the public one
            assert refused.status_code == 403 and "X-Forwarded-Host" in refused.text
            assert "jobmaster_dashboard=" not in refused.headers.get("set-cookie", "")
            login = await http.post("/ops/login", data={"token": TOKEN}, headers=forwarded)
            assert login.status_code == 303
            page = await http.get(f"/ops/jobs/{job_id}")
            assert "Path=/ops/" in page.headers["set-cookie"]
            token = csrf_of(page.text)
            cancel = f"/ops/jobs/{job_id}/cancel"
            evil = {**forwarded, "origin": "https://evil.com"}
            assert (await http.post(cancel, data={"csrf_token": token}, headers=evil)).status_code == 403
            given = {"origin": "https://ops.example.com:8443"}
            assert (await http.post(cancel, data={"csrf_token": token}, headers=given)).status_code == 303
            done = await http.post(f"/ops/jobs/{job_id}/retry", data={"csrf_token": token}, headers=forwarded)
            assert done.status_code == 303
            logout = await http.post("/ops/logout", headers={"origin": "https://evil.com"})
            assert logout.status_code == 403  # not logged out by another site
            assert (await http.get("/ops/jobs")).status_code == 200
    finally:
        await app.aclose()
    with pytest.raises(ValueError, match="not an origin"):
        create_app(jm, secret=SECRET, origins=["ops.example.com"])


async def test_a_bearer_client_needs_no_origin_but_may_not_name_another(jm: JobMaster) -> None:
    """A script with the token sends no Origin (no browser sends a bearer header by itself); one
    that names another site's origin is refused all the same."""
    job_id = await jm.insert_job(T, "add", 0, {"a": 1})
    app = create_app(jm, token=TOKEN, secret=SECRET)
    bearer = {"authorization": f"Bearer {TOKEN}"}
    try:
        async with client(app, origin=None, headers=bearer) as http:
            refused = await http.post(f"/jobs/{job_id}/cancel", headers={"origin": "http://evil.com"})
            assert refused.status_code == 403
            assert (await http.post(f"/jobs/{job_id}/cancel")).status_code == 303
        async with client(app, origin=None) as http:  # without the token: 401 first
            assert (await http.post(f"/jobs/{job_id}/retry")).status_code == 401
    finally:
        await app.aclose()


def test_origins_are_parsed_strictly() -> None:
    assert parse_origin("https://Dash.Example.com") == ("https", "dash.example.com", 443)
    assert parse_origin("http://[::1]:8080/x?y") == ("http", "[::1]", 8080)
    for bad in ("null", "", "ftp://x", "http://", "http://a:b", "http://user@evil.com@127.0.0.1", "//x"):
        assert parse_origin(bad) is None, bad

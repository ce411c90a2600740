"""One service shape (worker.services) and the typed events (worker.events): the hub delivers and
counts by kind, waits are bounded, work spawned in a group can be ended alone, the outage's probing
passes from one pause to another, and the dashboard's poller has no task of its own."""

from __future__ import annotations

import asyncio
import uuid

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from jobmaster_async import JobMaster
from jobmaster_async.events import Claimed, Completed, Count, Events, Failed, JobFinished, Retried
from jobmaster_async.web.live import Broadcaster, Snapshot
from jobmaster_async.worker.outage import Outage
from jobmaster_async.worker.services import Detached, spawn, start
from tests.conftest import worker
from tests.polling import within


def test_events_reach_the_subscribers_of_their_kind_and_of_its_bases() -> None:
    events = Events()
    finished: list[JobFinished] = []
    completed: list[Completed] = []
    unsubscribe = events.subscribe(JobFinished, finished.append)
    events.subscribe(Completed, completed.append)
    done, failed = Completed(uuid.uuid4(), "t.a"), Failed(uuid.uuid4(), "t.b", "ValueError")
    events.emit(done)
    events.emit(failed)
    events.emit(Claimed(uuid.uuid4(), "t.a"))
    assert finished == [done, failed] and completed == [done]
    assert (events.count(JobFinished), events.count(Completed), events.count(Retried)) == (2, 1, 0)
    assert events.count(Claimed) == 1
    unsubscribe()
    events.emit(Completed(uuid.uuid4(), "t.a"))
    assert finished == [done, failed] and events.count(JobFinished) == 3


def test_a_subscriber_that_raises_is_logged_and_the_others_still_get_the_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = Events()
    got: list[JobFinished] = []

    def broken(_event: JobFinished) -> None:
        raise KeyError("a bug of the subscriber's")

    events.subscribe(JobFinished, broken)
    events.subscribe(JobFinished, got.append)
    done = Completed(uuid.uuid4(), "t.a")
    with caplog.at_level("ERROR", logger="jobmaster_async.events"):
        events.emit(done)
    assert got == [done] and events.count(JobFinished) == 1
    assert "a subscriber of JobFinished raised" in caplog.text and "KeyError" in caplog.text


async def test_a_worker_goes_on_when_a_subscriber_of_its_events_raises(idle_jm: JobMaster) -> None:
    """A subscriber's bug is not the worker's: every job still finishes and frees its slot."""

    def broken(_event: JobFinished) -> None:
        raise RuntimeError("the app's handler is broken")

    idle_jm.events.subscribe(JobFinished, broken)
    ids = await idle_jm.insert_jobs("tasks_for_tests", "add", 1, [{"a": n} for n in range(6)])
    async with worker(idle_jm, concurrency=2) as running:
        await within(idle_jm.events.wait_for(JobFinished, 6), "6 jobs to finish beside a broken subscriber")
        assert not running.done()
    assert [(await idle_jm.get_job(i)).status for i in ids] == ["complete"] * 6  # type: ignore[union-attr]


async def test_waiting_for_events_counts_from_the_start_and_is_bounded() -> None:
    events = Events()
    events.emit(Completed(uuid.uuid4(), "t.a"))
    await events.wait_for(JobFinished, 1)  # already there
    waiting = asyncio.create_task(events.wait_for(JobFinished, 3))
    events.emit(Retried(uuid.uuid4(), "t.a"))
    await asyncio.sleep(0)  # let it look (the count is 2: it waits on)
    assert not waiting.done()
    events.emit(Failed(uuid.uuid4(), "t.a"))
    await within(waiting, "the third finished job")
    with pytest.raises(TimeoutError):
        await events.wait_for(JobFinished, 4, seconds=0.01)


class Ticking:
    """A service: counts while it runs, says when it started."""

    def __init__(self, events: Events) -> None:
        self.events = events
        self.running = False

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.running = True
        task_status.started()
        try:
            while True:
                self.events.emit(Claimed(uuid.uuid4(), "tick"))
                await anyio.sleep(0.001)
        finally:
            self.running = False


async def test_services_start_in_a_group_and_end_with_it() -> None:
    events = Events()
    first, second = Ticking(events), Ticking(events)
    async with anyio.create_task_group() as group:
        await start(group, first, second)
        assert first.running and second.running  # start returns once each said it started
        await within(events.wait_for(Claimed, 10), "ticks")
        group.cancel_scope.cancel()
    assert not first.running and not second.running


async def test_spawned_work_is_cancelled_alone_and_a_shielded_one_outlives_its_groups_cancel() -> None:
    ended: list[str] = []

    async def forever(name: str) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            ended.append(name)

    async with anyio.create_task_group() as group:
        plain = spawn(group, lambda: forever("plain"))
        shielded = spawn(group, lambda: forever("shielded"), shield=True)
        other = spawn(group, lambda: forever("other"))
        await anyio.lowlevel.checkpoint()  # they start
        plain.cancel()
        await plain.wait()
        assert ended == ["plain"] and not other.done
        group.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):  # this task is in the group's scope too
            await other.wait()
            assert ended == ["plain", "other"] and not shielded.done  # the shield holds
            shielded.cancel()
            await shielded.wait()
    assert ended == ["plain", "other", "shielded"]


async def test_a_detached_service_runs_until_stopped() -> None:
    events = Events()
    ticking = Ticking(events)
    detached = Detached(ticking, "ticking")
    detached.start()
    detached.start()  # already running: not a second one
    await within(events.wait_for(Claimed, 5), "ticks")
    assert detached.running and ticking.running
    await detached.stop()
    assert not detached.running and not ticking.running


class Broken:
    """A service with a bug: it raises once started."""

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        raise LookupError("a bug of the service's")


async def test_a_detached_service_that_raises_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """Nobody awaits a detached service: its error is logged with its traceback when it ends."""
    detached = Detached(Broken(), "broken")
    with caplog.at_level("ERROR", logger="jobmaster_async.worker.services"):
        detached.start()
        task = detached._task
        assert task is not None
        with pytest.raises(BaseException) as raised:  # the service's error, in its task group's group
            await asyncio.wait_for(asyncio.shield(task), 10)  # its callback, added first, ran first
        assert "LookupError" in repr(raised.value.exceptions if hasattr(raised.value, "exceptions") else raised.value)
    assert "broken ended on an error" in caplog.text and "LookupError" in caplog.text
    assert not detached.running


async def test_probing_passes_to_a_pause_still_waiting_when_the_probing_one_ends() -> None:
    probed = Count()

    async def probe() -> None:
        probed.add()
        raise ConnectionRefusedError(111, "Connection refused")

    outage = Outage(Events(), probe=probe)
    outage.failed("test", ConnectionRefusedError(111, "Connection refused"))
    short = asyncio.create_task(outage.pause(0.05))  # probes
    await anyio.lowlevel.checkpoint()
    long = asyncio.create_task(outage.pause(3600))  # waits for its turn to probe
    await within(short, "the short pause")
    await within(probed.wait_for(probed.count + 2), "probes by the long pause once the short one ended")
    assert not long.done()
    long.cancel()
    with pytest.raises(asyncio.CancelledError):
        await long


async def test_the_dashboards_poller_has_no_task_of_its_own(jm: JobMaster) -> None:
    """Mounted in another app, a dashboard gets no lifespan events: its subscribers read, and
    nothing runs once they left (or once it is closed)."""
    broadcaster = Broadcaster(jm)
    before = asyncio.all_tasks()  # this test's, and whatever earlier tests left on the loop
    try:
        subscription = broadcaster.subscribe()
        first = await anext(subscription)
        assert first is not None and broadcaster.subscribers == 1
        await jm.insert_job("tasks_for_tests", "add", 0, {"a": 1})
        latest: Snapshot | None = first
        while latest is None or latest.totals.get("waiting") != 1:
            latest = await anext(subscription)  # read by this subscriber itself
        assert asyncio.all_tasks() <= before  # no poller task
        await subscription.aclose()  # type: ignore[attr-defined]
        assert broadcaster.subscribers == 0 and asyncio.all_tasks() <= before
    finally:
        await broadcaster.close()
    assert broadcaster._conn is None and broadcaster._idle_timer is None

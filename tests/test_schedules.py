"""Cron schedules: parsing, six fields with seconds first, and ticks across DST transitions
(computed, not waited for)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from jobmaster_async import Cron, TaskDefinitionError

PARIS = ZoneInfo("Europe/Paris")  # 2026: spring gap 29 March 02:00-03:00, autumn overlap 25 October 02:00-03:00


def _walk(cron: Cron, start: datetime, count: int) -> list[str]:
    ticks, tick = [], start
    for _ in range(count):
        tick = cron.next_tick(tick)
        ticks.append(tick.astimezone(cron.zone).isoformat())
    return ticks


def test_six_fields_put_seconds_first() -> None:
    every_minute = Cron("0 * * * * *")
    assert every_minute.next_tick(datetime(2026, 12, 1, 3, 0, 30, tzinfo=UTC)) == datetime(
        2026, 12, 1, 3, 1, tzinfo=UTC
    )
    every_second = Cron("* * * * * *")
    assert every_second.next_tick(datetime(2026, 12, 1, 3, 0, 30, tzinfo=UTC)) == datetime(
        2026, 12, 1, 3, 0, 31, tzinfo=UTC
    )
    assert Cron("*/5 * * * *").next_tick(datetime(2026, 12, 1, 3, 1, tzinfo=UTC)) == datetime(
        2026, 12, 1, 3, 5, tzinfo=UTC
    )


def test_utc_by_default_and_latest_tick_for_catching_up() -> None:
    daily = Cron("0 3 * * *")
    assert daily.timezone == "UTC"
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    assert daily.latest_tick(now) == datetime(2026, 12, 5, 3, 0, tzinfo=UTC)
    assert daily.latest_tick(datetime(2026, 12, 5, 3, 0, tzinfo=UTC)) == datetime(2026, 12, 5, 3, 0, tzinfo=UTC)


def test_a_fixed_hour_is_skipped_in_the_spring_gap() -> None:
    cron = Cron("30 2 * * *", timezone="Europe/Paris")
    assert _walk(cron, datetime(2026, 3, 27, 12, 0, tzinfo=UTC), 3) == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-30T02:30:00+02:00",  # 29 March has no 02:30
        "2026-03-31T02:30:00+02:00",
    ]


def test_a_fixed_hour_ticks_at_the_first_occurrence_in_the_autumn_overlap() -> None:
    cron = Cron("30 2 * * *", timezone="Europe/Paris")
    assert _walk(cron, datetime(2026, 10, 24, 12, 0, tzinfo=UTC), 2) == [
        "2026-10-25T02:30:00+02:00",  # not again at 02:30+01:00
        "2026-10-26T02:30:00+01:00",
    ]


def test_a_wildcard_hour_ticks_at_every_real_instant() -> None:
    cron = Cron("*/30 * * * *", timezone="Europe/Paris")
    assert _walk(cron, datetime(2026, 10, 24, 23, 45, tzinfo=UTC), 5) == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:00:00+01:00",  # the overlap's second pass
        "2026-10-25T02:30:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]
    assert _walk(cron, datetime(2026, 3, 29, 0, 45, tzinfo=UTC), 2) == [
        "2026-03-29T03:00:00+02:00",  # 02:00 and 02:30 do not exist
        "2026-03-29T03:30:00+02:00",
    ]
    during_the_second_pass = datetime(2026, 10, 25, 1, 10, tzinfo=UTC)  # 02:10+01:00
    assert cron.latest_tick(during_the_second_pass).astimezone(PARIS).isoformat() == "2026-10-25T02:00:00+01:00"


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({"expression": "* * *"}, "five fields"),
        ({"expression": "61 * * * *"}, "61"),
        ({"expression": "* * * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"expression": "* * * * *", "priority": 1.5}, "priority"),
    ],
)
def test_bad_schedules_are_refused_at_definition(arguments: dict[str, object], says: str) -> None:
    with pytest.raises(TaskDefinitionError, match=says):
        Cron(**arguments)  # type: ignore[arg-type]


def test_a_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        Cron("* * * * *").next_tick(datetime(2026, 1, 1))


#: the type key of the tasks a test defines (removed afterwards by the ``forget`` fixture)
SCRATCH = "schedule_checks"


def test_a_cron_must_give_every_required_argument_and_no_unknown_one(forget: None) -> None:
    from jobmaster_async import task

    @task(type_key="schedule_checks", cron=["*/5 * * * *", Cron("0 3 * * *", priority=2)])
    async def sweep(older_than_days: int = 7) -> None: ...

    assert [c.expression for c in sweep.__jobmaster_task__.crons] == ["*/5 * * * *", "0 3 * * *"]  # type: ignore[attr-defined]
    with pytest.raises(TaskDefinitionError, match="does not give the required argument 'path'"):

        @task(type_key="schedule_checks", cron="0 3 * * *")
        async def export(path: str) -> None: ...

    with pytest.raises(TaskDefinitionError, match="unknown argument 'colour'"):

        @task(type_key="schedule_checks", cron=Cron("0 3 * * *", arguments={"path": "x", "colour": "red"}))
        async def export_again(path: str) -> None: ...

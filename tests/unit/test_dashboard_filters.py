"""The dashboard's URL filters: defaults, every way to get them wrong, and the rollup step."""

from __future__ import annotations

from datetime import date

import pytest

from dashboard.filters import FilterError, Filters, parse_filters

TODAY = date(2026, 3, 31)


def pairs(query: str) -> list[tuple[str, str]]:
    return [tuple(part.split("=", 1)) for part in query.split("&") if part]  # type: ignore[misc]


def test_no_filters_mean_the_last_30_days_of_everything() -> None:
    assert parse_filters([], TODAY) == Filters(start=date(2026, 3, 2), end=TODAY)


def test_every_filter_is_read() -> None:
    query = (
        "from=2026-03-01&to=2026-03-15&exhibition=EXH_03&exhibition=EXH_01&exhibition=EXH_03"
        "&floor=Vault&floor=1&request=Emergency&hour_from=9&hour_to=12"
        "&granularity=quarter&heatmap=exhibition"
    )
    assert parse_filters(pairs(query), TODAY) == Filters(
        start=date(2026, 3, 1),
        end=date(2026, 3, 15),
        exhibitions=("EXH_01", "EXH_03"),
        floors=("1", "Vault"),
        request_values=(1,),
        hour_from=9,
        hour_to=12,
        granularity="quarter",
        heatmap="exhibition",
    )


@pytest.mark.parametrize(
    ("query", "start", "end"),
    [
        ("days=7", date(2026, 3, 25), TODAY),
        ("to=2026-02-28", date(2026, 1, 30), date(2026, 2, 28)),
        ("to=2026-02-28&days=1", date(2026, 2, 28), date(2026, 2, 28)),
        ("from=2026-03-30", date(2026, 3, 30), TODAY),
        ("from=&to=&days=", date(2026, 3, 2), TODAY),  # empty values are "not given"
    ],
)
def test_date_range_defaults(query: str, start: date, end: date) -> None:
    filters = parse_filters(pairs(query), TODAY)
    assert (filters.start, filters.end) == (start, end)


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("colour=red", "unknown filter 'colour'"),
        ("from=2026-02-30", "from='2026-02-30' is not a date"),
        ("from=2026-03-10&to=2026-03-01", "from 2026-03-10 is after to 2026-03-01"),
        ("days=0", "days='0' must be a whole number from 1"),
        ("hour_from=24", "hour_from='24' must be a whole number from 0 to 23"),
        ("hour_to=-1", "hour_to='-1' must be a whole number"),
        ("hour_from=12&hour_to=9", "hour_from 12 is after hour_to 9"),
        ("exhibition=5", "exhibition='5' is not an exhibition id"),
        ("request=fire", "request='fire' must be assistance or emergency"),
        ("request=assistance&request=emergency", "request is given more than once"),
        ("granularity=minute", "granularity='minute' must be hour or quarter"),
        ("heatmap=room", "heatmap='room' must be floor or exhibition"),
        ("from=1990-01-01", "longer than"),
    ],
)
def test_bad_filters_are_named(query: str, problem: str) -> None:
    with pytest.raises(FilterError) as raised:
        parse_filters(pairs(query), TODAY)
    assert any(problem in text for text in raised.value.problems), raised.value.problems


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(FilterError) as raised:
        parse_filters(pairs("from=x&hour_from=99&request=fire&colour=red"), TODAY)
    assert len(raised.value.problems) == 4


@pytest.mark.parametrize(
    ("start", "end", "bucket"),
    [
        (date(2026, 3, 1), date(2026, 3, 1), "day"),
        (date(2026, 1, 1), date(2026, 3, 3), "day"),  # 62 days
        (date(2026, 1, 1), date(2026, 3, 4), "week"),
        (date(2025, 1, 1), date(2026, 2, 4), "week"),  # 400 days
        (date(2025, 1, 1), date(2026, 2, 5), "month"),
    ],
)
def test_the_rating_line_steps_by_day_week_or_month(start: date, end: date, bucket: str) -> None:
    assert Filters(start=start, end=end).bucket == bucket


def test_filters_echo_as_a_query() -> None:
    filters = parse_filters(pairs("from=2026-03-01&to=2026-03-02&request=assistance"), TODAY)
    query = filters.as_query()
    assert query["from"] == "2026-03-01"
    assert query["request"] == ["assistance"]
    assert query["exhibition"] == []

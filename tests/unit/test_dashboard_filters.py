"""The dashboard's URL filters: defaults, every way to get them wrong, the rollup step, and
their OpenAPI description, which must say what the parser does."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import pytest

from dashboard.filters import FilterError, Filters, openapi_parameters, parse_filters

TODAY = date(2026, 3, 31)


def pairs(query: str) -> list[tuple[str, str]]:
    return [tuple(part.split("=", 1)) for part in query.split("&") if part]  # type: ignore[misc]


def test_no_filters_mean_the_last_30_days_of_everything() -> None:
    assert parse_filters([], TODAY) == Filters(start=date(2026, 3, 2), end=TODAY)


def test_every_filter_is_read() -> None:
    query = (
        "from=2026-03-01&to=2026-03-15&exhibition=EXH_03&exhibition=EXH_01&exhibition=EXH_03"
        "&floor=Vault&floor=1&request=emergency&hour_from=9&hour_to=12"
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
        # A rolling window stops at the calendar's first day instead of overflowing.
        ("to=0001-01-01", date(1, 1, 1), date(1, 1, 1)),
        ("to=0001-01-05&days=30", date(1, 1, 1), date(1, 1, 5)),
        ("to=9999-12-31", date(9999, 12, 2), date(9999, 12, 31)),
        ("from=9999-12-01&to=9999-12-31", date(9999, 12, 1), date(9999, 12, 31)),
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
        ("from=9999-12-31", "from 9999-12-31 is after to 2026-03-31 (today)"),
        # Only what the OpenAPI document promises: ISO dates, exact words, no spaces.
        ("from=20260301", "from='20260301' is not a date"),
        ("to=2026-W10-1", "to='2026-W10-1' is not a date"),
        ("to=0000-12-31", "to='0000-12-31' is not a date"),
        ("from= 2026-03-01", "from=' 2026-03-01' is not a date"),
        ("request=Emergency", "request='Emergency' must be assistance or emergency"),
        ("days=\u0661", "days='\u0661' must be a whole number"),  # an Arabic-Indic one
        ("days=" + "9" * 5000, "days='" + "9" * 40 + "'... must be a whole number from 1 to 7320"),
        ("floor=Vault\x00", "floor='Vault\\x00' holds a NUL"),  # psycopg2 refuses NUL
        ("floor=\ud800", "floor='\\ud800' holds a NUL or a lone surrogate"),  # not UTF-8
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


def test_a_range_is_judged_only_once_both_ends_are_read() -> None:
    with pytest.raises(FilterError) as raised:
        parse_filters(pairs("from=2027-01-01&to=soon"), TODAY)
    assert raised.value.problems == [
        "to='soon' is not a date like 2026-10-31 (0001-01-01 to 9999-12-31)"
    ]


def documented(name: str) -> dict[str, Any]:
    """The JSON schema that the OpenAPI document gives the query parameter `name`."""
    [parameter] = [p for p in openapi_parameters() if p["name"] == name]
    schema: dict[str, Any] = parameter["schema"]
    return schema


def test_every_documented_filter_is_read_and_no_other() -> None:
    for parameter in openapi_parameters():
        parse_filters([(parameter["name"], "")], TODAY)  # known, and empty means not given
    with pytest.raises(FilterError):
        parse_filters([("colour", "")], TODAY)


@pytest.mark.parametrize("name", ["days", "hour_from", "hour_to"])
def test_documented_number_bounds_are_the_parsers(name: str) -> None:
    schema = documented(name)
    other = "hour_to=23" if name == "hour_from" else "hour_from=0"
    for accepted in (schema["minimum"], schema["maximum"]):
        parse_filters(pairs(f"{name}={accepted}&{other}"), TODAY)
    for refused in (schema["minimum"] - 1, schema["maximum"] + 1):
        with pytest.raises(FilterError):
            parse_filters(pairs(f"{name}={refused}"), TODAY)


@pytest.mark.parametrize("name", ["request", "granularity", "heatmap"])
def test_documented_choices_are_the_parsers(name: str) -> None:
    choices = documented(name)["enum"]
    for choice in choices:
        parse_filters([(name, choice)], TODAY)
    with pytest.raises(FilterError):
        parse_filters([(name, choices[0].upper())], TODAY)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("exhibition", "EXH_01"),
        ("exhibition", "EXH_123456"),
        ("exhibition", "EXH_1"),
        ("exhibition", "EXH_01 "),
        ("exhibition", "exh_01"),
        ("floor", "x" * 100),
        ("floor", "x" * 101),
        ("floor", "Vault\x00"),
    ],
)
def test_documented_text_is_what_the_parser_takes(name: str, value: str) -> None:
    item = documented(name)["items"]
    valid = re.search(item["pattern"], value) is not None and len(value) <= item.get(
        "maxLength", len(value)
    )
    try:
        parse_filters([(name, value)], TODAY)
    except FilterError:
        assert not valid, value
    else:
        assert valid, value


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

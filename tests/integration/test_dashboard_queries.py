"""Each chart's query on a small fixed dataset (dashboard_support.RATINGS and REQUESTS),
against values worked out by hand from the comments beside each interaction."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime

import pytest
from psycopg2.extensions import cursor as Cursor

from dashboard import queries
from dashboard.filters import Filters, parse_filters
from lmnh.config import DatabaseSettings
from lmnh.database import connect
from tests.integration.dashboard_support import NAMES, RATINGS, REQUESTS, dashboard_db, store

pytestmark = pytest.mark.integration
__all__ = ["dashboard_db"]

MARCH = "from=2026-03-28&to=2026-03-31"
OCTOBER = "from=2026-10-24&to=2026-10-26"


@pytest.fixture
def cur(dashboard_db: DatabaseSettings) -> Iterator[Cursor]:
    store(dashboard_db, RATINGS, REQUESTS)
    conn = connect(dashboard_db)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            yield cursor
    finally:
        conn.close()


def filters(query: str) -> Filters:
    pairs = [tuple(part.split("=", 1)) for part in query.split("&") if part]
    return parse_filters(pairs, date(2026, 11, 20))  # type: ignore[arg-type]


def test_average_rating_per_day_on_the_london_calendar(cur: Cursor) -> None:
    rows = queries.rating_over_time(cur, filters(MARCH))
    assert [(r["period"], r["public_id"], r["average_rating"], r["ratings"]) for r in rows] == [
        ("2026-03-28", "EXH_01", 4.0, 1),
        ("2026-03-28", "EXH_03", 1.0, 1),
        ("2026-03-28", "EXH_04", 3.0, 1),
        ("2026-03-29", "EXH_03", 0.0, 1),
        ("2026-03-30", "EXH_01", 2.5, 2),
        ("2026-03-31", "EXH_00", 4.0, 1),
    ]
    assert rows[0]["exhibition_name"] == "Adaptation"


def test_average_rating_per_week_for_a_long_range(cur: Cursor) -> None:
    rows = queries.rating_over_time(cur, filters("from=2026-01-01&to=2026-06-30"))
    # Weeks start on Monday: 28-29 Mar fall in the week of 23 Mar, 30 Mar-1 Apr in the next.
    assert [(r["period"], r["public_id"], r["average_rating"]) for r in rows] == [
        ("2026-03-23", "EXH_01", 4.0),
        ("2026-03-23", "EXH_03", 0.5),
        ("2026-03-23", "EXH_04", 3.0),
        ("2026-03-30", "EXH_00", 4.0),
        ("2026-03-30", "EXH_01", 2.5),
        ("2026-03-30", "EXH_04", 1.0),
    ]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # 10:00-10:59 London holds only the 10:30 BST rating (09:30 UTC); 10:00 UTC is 11 BST.
        (f"{MARCH}&hour_from=10&hour_to=10", [("2026-03-30", "EXH_01", 2.0)]),
        # 29 March on the London calendar.
        ("from=2026-03-29&to=2026-03-29", [("2026-03-29", "EXH_03", 0.0)]),
        # 00:30 BST on 1 April is 23:30 UTC on 31 March.
        ("from=2026-04-01&to=2026-04-01", [("2026-04-01", "EXH_04", 1.0)]),
        (f"{MARCH}&floor=Vault&floor=3", [
            ("2026-03-28", "EXH_01", 4.0), ("2026-03-28", "EXH_04", 3.0),
            ("2026-03-30", "EXH_01", 2.5),
        ]),
        (f"{MARCH}&exhibition=EXH_00", [("2026-03-31", "EXH_00", 4.0)]),
        (f"{MARCH}&exhibition=EXH_00&floor=Vault", []),
    ],
)  # fmt: skip
def test_rating_filters(cur: Cursor, query: str, expected: list[tuple[str, str, float]]) -> None:
    rows = queries.rating_over_time(cur, filters(query))
    assert [(r["period"], r["public_id"], r["average_rating"]) for r in rows] == expected


def test_popularity_counts_ratings_and_requests_of_every_exhibition(cur: Cursor) -> None:
    rows = queries.popularity(cur, filters("from=2026-03-28&to=2026-10-31"))
    assert [(r["public_id"], r["ratings"], r["requests"], r["interactions"]) for r in rows] == [
        ("EXH_01", 3, 2, 5),
        ("EXH_03", 2, 2, 4),
        ("EXH_04", 2, 1, 3),
        ("EXH_00", 1, 1, 2),
        ("EXH_02", 0, 1, 1),
        ("EXH_05", 0, 0, 0),
    ]
    assert {r["public_id"]: r["exhibition_name"] for r in rows} == NAMES


def test_popularity_with_floor_and_request_type(cur: Cursor) -> None:
    rows = queries.popularity(
        cur, filters("from=2026-03-28&to=2026-10-31&floor=1&request=emergency")
    )
    assert [(r["public_id"], r["ratings"], r["requests"]) for r in rows] == [
        ("EXH_03", 2, 0),
        ("EXH_00", 1, 0),
        ("EXH_05", 0, 0),
    ]


def test_top_rated_ranks_by_average_then_by_count(cur: Cursor) -> None:
    rows = queries.top_rated(cur, filters(MARCH))
    assert [
        (r["rank"], r["public_id"], r["ratings"], r["average_rating"], r["distribution"])
        for r in rows
    ] == [
        (1, "EXH_00", 1, 4.0, [0, 0, 0, 0, 1]),
        (2, "EXH_01", 3, 3.0, [0, 0, 1, 1, 1]),
        (3, "EXH_04", 1, 3.0, [0, 0, 0, 1, 0]),
        (4, "EXH_03", 2, 0.5, [1, 1, 0, 0, 0]),
    ]
    assert rows[1]["floor_name"] == "Vault"


def test_assistance_against_emergency(cur: Cursor) -> None:
    rows = queries.request_share(cur, filters(OCTOBER))
    assert [(r["request_description"], r["requests"]) for r in rows] == [
        ("Assistance", 5),
        ("Emergency", 2),
    ]
    assert [r["share"] for r in rows] == pytest.approx([5 / 7, 2 / 7])
    only = queries.request_share(cur, filters(f"{OCTOBER}&request=emergency"))
    assert [(r["request_description"], r["requests"], r["share"]) for r in only] == [
        ("Emergency", 2, 1.0)
    ]


def test_an_empty_range_gives_zero_requests_not_an_error(cur: Cursor) -> None:
    rows = queries.request_share(cur, filters("from=2026-01-01&to=2026-01-31"))
    assert [(r["requests"], r["share"]) for r in rows] == [(0, 0.0), (0, 0.0)]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def nonzero(rows: list[dict[str, object]], *keys: str) -> list[tuple[object, ...]]:
    return [tuple(r[k] for k in keys) for r in rows if r["requests"]]


def test_requests_per_hour_of_the_london_day(cur: Cursor) -> None:
    rows = queries.requests_by_time_of_day(cur, filters(OCTOBER))
    # Opening hours 08:00-18:00, both types, plus the 01:00 slot that has a request.
    assert len(rows) == (11 + 1) * 2
    assert rows[0]["slot"] == "01:00"
    assert nonzero(rows, "slot", "request_description", "requests") == [
        ("01:00", "Assistance", 1),
        ("09:00", "Assistance", 3),
        ("10:00", "Emergency", 1),
        ("13:00", "Emergency", 1),
        ("18:00", "Assistance", 1),
    ]


def test_requests_per_quarter_hour(cur: Cursor) -> None:
    rows = queries.requests_by_time_of_day(cur, filters(f"{OCTOBER}&granularity=quarter"))
    # 08:45 to 18:15 is 39 quarter hours, plus 01:30.
    assert len(rows) == (39 + 1) * 2
    assert nonzero(rows, "slot", "request_description", "requests") == [
        ("01:30", "Assistance", 1),
        ("09:00", "Assistance", 2),
        ("09:15", "Assistance", 1),
        ("10:00", "Emergency", 1),
        ("13:30", "Emergency", 1),
        ("18:00", "Assistance", 1),
    ]


def test_time_of_day_filter_keeps_only_its_hours(cur: Cursor) -> None:
    rows = queries.requests_by_time_of_day(cur, filters(f"{OCTOBER}&hour_from=9&hour_to=9"))
    assert [(r["slot"], r["request_description"], r["requests"]) for r in rows] == [
        ("09:00", "Assistance", 3),
        ("09:00", "Emergency", 0),
    ]


def test_requests_by_floor_bottom_to_top(cur: Cursor) -> None:
    rows = queries.requests_by_floor(cur, filters(OCTOBER))
    assert [(r["floor_name"], r["request_description"], r["requests"]) for r in rows] == [
        ("Vault", "Assistance", 1),
        ("Vault", "Emergency", 1),
        ("1", "Assistance", 3),
        ("1", "Emergency", 0),
        ("2", "Assistance", 1),
        ("2", "Emergency", 0),
        ("3", "Assistance", 0),
        ("3", "Emergency", 1),
    ]


def test_requests_by_exhibition(cur: Cursor) -> None:
    rows = queries.requests_by_exhibition(cur, filters(OCTOBER))
    counts = {(r["public_id"], r["request_value"]): r["requests"] for r in rows}
    assert counts == {
        ("EXH_00", 0): 1, ("EXH_00", 1): 0,
        ("EXH_01", 0): 1, ("EXH_01", 1): 1,
        ("EXH_02", 0): 1, ("EXH_02", 1): 0,
        ("EXH_03", 0): 2, ("EXH_03", 1): 0,
        ("EXH_04", 0): 0, ("EXH_04", 1): 1,
        ("EXH_05", 0): 0, ("EXH_05", 1): 0,
    }  # fmt: skip
    emergencies = queries.requests_by_exhibition(cur, filters(f"{OCTOBER}&request=emergency"))
    assert {(r["public_id"], r["requests"]) for r in emergencies if r["requests"]} == {
        ("EXH_01", 1),
        ("EXH_04", 1),
    }


def test_heatmap_by_floor_and_hour(cur: Cursor) -> None:
    rows = queries.request_heatmap(cur, filters(OCTOBER))
    assert nonzero(rows, "place", "hour_of_day", "requests") == [
        ("Vault", 9, 1),
        ("Vault", 10, 1),
        ("1", 9, 2),
        ("1", 18, 1),
        ("2", 1, 1),
        ("3", 13, 1),
    ]
    # Every floor has every opening hour and the 01:00 that has a request: the grid has no holes.
    assert len(rows) == 4 * (11 + 1)


def test_heatmap_by_exhibition_with_filters(cur: Cursor) -> None:
    rows = queries.request_heatmap(
        cur, filters(f"{OCTOBER}&heatmap=exhibition&floor=1&request=assistance&hour_from=9")
    )
    assert {r["place"] for r in rows} == {
        "EXH_00 Measureless to Man",
        "EXH_03 Cetacean Sensations",
        "EXH_05 Thunder Lizards",
    }
    assert nonzero(rows, "place", "hour_of_day", "requests") == [
        ("EXH_00 Measureless to Man", 18, 1),
        ("EXH_03 Cetacean Sensations", 9, 2),
    ]
    assert {r["hour_of_day"] for r in rows} == set(range(9, 19))


def test_freshness_and_choices(cur: Cursor) -> None:
    fresh = queries.freshness(cur)
    assert datetime.fromisoformat(fresh["latest_interaction_at"]) == at("2026-10-26T09:15:00Z")
    assert datetime.fromisoformat(fresh["latest_rating_at"]) == at("2026-03-31T23:30:00Z")
    assert fresh["last_loaded_at"] is None  # the pipeline has not run here
    offered = queries.choices(cur)
    assert offered["floors"] == ["Vault", "1", "2", "3"]
    assert [e["public_id"] for e in offered["exhibitions"]] == sorted(NAMES)
    assert [t["request_description"] for t in offered["request_types"]] == [
        "Assistance",
        "Emergency",
    ]
    assert [r["rating_value"] for r in offered["ratings"]] == [0, 1, 2, 3, 4]

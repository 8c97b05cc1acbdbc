"""views.sql against real PostgreSQL: the contract's columns, and rollups that always add up to
the facts, whatever writes them (COPY, INSERT, UPDATE, DELETE, TRUNCATE, a late apply)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest

from dashboard import VIEWS_FILE
from lmnh.config import DatabaseSettings
from lmnh.database import apply_schema, connect, reset_schema
from lmnh.museum import LONDON
from tests.integration.dashboard_support import dashboard_db, query, store

pytestmark = pytest.mark.integration
__all__ = ["dashboard_db"]

# The contract documented in docs/dashboards.md: views and their columns, in order. Columns may be
# added at the end; none may change or go.
CONTRACT = {
    "exhibition_overview": [
        "exhibition_id", "public_id", "exhibition_name", "exhibition_description", "floor_name",
        "department_name", "exhibition_start_date",
    ],
    "rating_detail": [
        "rating_interaction_id", "event_at", "london_time", "london_date", "hour_of_day",
        "public_id", "exhibition_name", "floor_name", "department_name", "rating_value",
        "rating_description",
    ],
    "request_detail": [
        "request_interaction_id", "event_at", "london_time", "london_date", "hour_of_day",
        "public_id", "exhibition_name", "floor_name", "department_name", "request_value",
        "request_description",
    ],
    "rating_hourly": [
        "london_date", "hour_of_day", "public_id", "exhibition_name", "floor_name",
        "department_name", "rating_value", "rating_description", "interactions",
    ],
    "request_quarter_hourly": [
        "london_date", "hour_of_day", "quarter_hour_start", "public_id", "exhibition_name",
        "floor_name", "department_name", "request_value", "request_description", "interactions",
    ],
    "data_freshness": [
        "latest_rating_at", "latest_request_at", "latest_interaction_at", "last_loaded_at",
    ],
    "rating_daily": [
        "london_date", "public_id", "exhibition_name", "floor_name", "department_name",
        "rating_value", "rating_description", "interactions",
    ],
    "request_daily": [
        "london_date", "public_id", "exhibition_name", "floor_name", "department_name",
        "request_value", "request_description", "interactions",
    ],
}  # fmt: skip

# What the rollups must hold: the detail views regrouped.
RATINGS_FROM_FACTS = (
    "SELECT london_date, hour_of_day, public_id, rating_value, count(*) FROM rating_detail"
    " GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
)
RATINGS_FROM_ROLLUP = (
    "SELECT london_date, hour_of_day, public_id, rating_value, interactions FROM rating_hourly"
    " ORDER BY 1, 2, 3, 4"
)
REQUESTS_FROM_FACTS = (
    "SELECT london_date, date_trunc('hour', london_time)::time"
    "  + floor(extract(minute FROM london_time) / 15) * interval '15 minutes',"
    " public_id, request_value, count(*) FROM request_detail"
    " GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
)
REQUESTS_FROM_ROLLUP = (
    "SELECT london_date, quarter_hour_start, public_id, request_value, interactions"
    " FROM request_quarter_hourly ORDER BY 1, 2, 3, 4"
)
DAILY_RATINGS_FROM_FACTS = (
    "SELECT london_date, public_id, rating_value, count(*) FROM rating_detail"
    " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)
DAILY_RATINGS_FROM_ROLLUP = (
    "SELECT london_date, public_id, rating_value, interactions FROM rating_daily ORDER BY 1, 2, 3"
)
DAILY_REQUESTS_FROM_FACTS = (
    "SELECT london_date, public_id, request_value, count(*) FROM request_detail"
    " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)
DAILY_REQUESTS_FROM_ROLLUP = (
    "SELECT london_date, public_id, request_value, interactions FROM request_daily ORDER BY 1, 2, 3"
)
SOME_RATINGS = [
    ("EXH_00", 3, "2026-03-29T00:59:59Z"),  # 00:59 GMT, a minute before the clocks go forward
    ("EXH_00", 3, "2026-03-29T01:00:00Z"),  # 02:00 BST
    ("EXH_00", 3, "2026-03-29T09:10:00Z"),
    ("EXH_00", 4, "2026-03-29T09:20:00Z"),
    ("EXH_05", 1, "2026-10-25T00:59:00Z"),  # 01:59 BST
    ("EXH_05", 1, "2026-10-25T01:01:00Z"),  # 01:01 GMT, the second 01:00 hour
]
SOME_REQUESTS = [
    ("EXH_02", 1, "2026-10-25T00:59:00Z"),
    ("EXH_02", 1, "2026-10-25T01:01:00Z"),
    ("EXH_02", 0, "2026-10-25T09:44:59Z"),
    ("EXH_02", 0, "2026-10-25T09:45:00Z"),
]


def rollups(database: DatabaseSettings) -> list[list[object]]:
    return [
        query(database, counted)
        for counted in (
            RATINGS_FROM_ROLLUP,
            REQUESTS_FROM_ROLLUP,
            DAILY_RATINGS_FROM_ROLLUP,
            DAILY_REQUESTS_FROM_ROLLUP,
        )
    ]


def assert_rollups_add_up(database: DatabaseSettings) -> None:
    assert query(database, RATINGS_FROM_ROLLUP) == query(database, RATINGS_FROM_FACTS)
    assert query(database, REQUESTS_FROM_ROLLUP) == query(database, REQUESTS_FROM_FACTS)
    assert query(database, DAILY_RATINGS_FROM_ROLLUP) == query(database, DAILY_RATINGS_FROM_FACTS)
    assert query(database, DAILY_REQUESTS_FROM_ROLLUP) == query(database, DAILY_REQUESTS_FROM_FACTS)


def test_the_contract_views_have_their_documented_columns(dashboard_db: DatabaseSettings) -> None:
    rows = query(
        dashboard_db,
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = ANY(%s)"
        " ORDER BY table_name, ordinal_position",
        (list(CONTRACT),),
    )
    found: dict[str, list[str]] = {}
    for view, column in rows:
        found.setdefault(view, []).append(column)
    assert found == CONTRACT


def test_rollups_follow_inserts_across_clock_changes(dashboard_db: DatabaseSettings) -> None:
    store(dashboard_db, SOME_RATINGS, SOME_REQUESTS)
    assert_rollups_add_up(dashboard_db)
    assert query(
        dashboard_db,
        "SELECT london_date::text, hour_of_day, public_id, rating_value, interactions"
        " FROM rating_hourly ORDER BY 1, 2, 3, 4",
    ) == [
        ("2026-03-29", 0, "EXH_00", 3, 1),  # 00:59:59 GMT
        ("2026-03-29", 2, "EXH_00", 3, 1),  # a second later by the clock: 02:00 BST
        ("2026-03-29", 10, "EXH_00", 3, 1),
        ("2026-03-29", 10, "EXH_00", 4, 1),
        ("2026-10-25", 1, "EXH_05", 1, 2),  # 01:59 BST and 01:01 GMT: the long day's 01:00
    ]
    assert query(
        dashboard_db,
        "SELECT london_date::text, quarter_hour_start::text, request_description, interactions"
        " FROM request_quarter_hourly ORDER BY 1, 2",
    ) == [
        ("2026-10-25", "01:00:00", "Emergency", 1),
        ("2026-10-25", "01:45:00", "Emergency", 1),
        ("2026-10-25", "09:30:00", "Assistance", 1),
        ("2026-10-25", "09:45:00", "Assistance", 1),
    ]


def test_rollups_follow_copy_update_delete_and_truncate(dashboard_db: DatabaseSettings) -> None:
    store(dashboard_db, SOME_RATINGS, SOME_REQUESTS)
    conn = connect(dashboard_db)
    try:
        with conn, conn.cursor() as cur:
            # The pipeline's way in: COPY, one batch, many rows of the same keys.
            cur.execute("SELECT exhibition_id FROM exhibition WHERE public_id = 'EXH_03'")
            exhibition = cur.fetchone()
            cur.execute("SELECT rating_id FROM rating WHERE rating_value = 2")
            rating = cur.fetchone()
            assert exhibition and rating
            rows = "".join(
                f"{exhibition[0]}\t{rating[0]}\t2026-06-01T1{n % 8}:00:00+01:00\tcopy\t0\t{n}\n"
                for n in range(500)
            )
            cur.copy_expert(
                "COPY rating_interaction (exhibition_id, rating_id, event_at, kafka_topic,"
                " kafka_partition, kafka_offset) FROM STDIN",
                io.StringIO(rows),
            )
        assert_rollups_add_up(dashboard_db)
        assert query(
            dashboard_db,
            "SELECT sum(interactions)::int FROM rating_hourly WHERE london_date = '2026-06-01'",
        ) == [(500,)]

        with conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE rating_interaction SET rating_id = (SELECT rating_id FROM rating"
                " WHERE rating_value = 0) WHERE kafka_topic = 'copy' AND kafka_offset < 100"
            )
            cur.execute(
                "UPDATE request_interaction SET event_at = event_at + interval '1 day'"
                " WHERE event_at < '2026-10-25T01:00:00Z'"
            )
        assert_rollups_add_up(dashboard_db)

        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM rating_interaction WHERE kafka_topic = 'copy'")
            cur.execute("DELETE FROM request_interaction WHERE request_id = 1")
        assert_rollups_add_up(dashboard_db)
        # Emptied keys are gone, not left at zero.
        assert query(dashboard_db, "SELECT count(*) FROM rating_rollup WHERE interactions = 0") == [
            (0,)
        ]
        assert query(
            dashboard_db, "SELECT count(*) FROM rating_hourly WHERE london_date = '2026-06-01'"
        ) == [(0,)]

        with conn, conn.cursor() as cur:
            cur.execute("TRUNCATE rating_interaction, request_interaction, request_rollup")
        assert query(
            dashboard_db,
            "SELECT (SELECT count(*) FROM rating_rollup) + (SELECT count(*) FROM request_rollup)",
        ) == [(0,)]
    finally:
        conn.close()


def test_applying_again_keeps_the_rollups_and_a_stale_one_is_rebuilt(
    dashboard_db: DatabaseSettings,
) -> None:
    store(dashboard_db, SOME_RATINGS, SOME_REQUESTS)
    before = rollups(dashboard_db)
    conn = connect(dashboard_db)
    try:
        apply_schema(conn, [VIEWS_FILE])
        assert rollups(dashboard_db) == before
        # A rollup that lost track (say, views.sql first applied to a loaded database).
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM rating_rollup WHERE hour_of_day = 9")
            cur.execute("UPDATE request_rollup SET interactions = interactions + 5")
            # A daily rollup that no longer regroups its hourly one, with the same total.
            cur.execute(
                "UPDATE rating_daily_rollup SET london_date = london_date - 400"
                " WHERE london_date = (SELECT min(london_date) FROM rating_daily_rollup)"
            )
            cur.execute("DELETE FROM request_daily_rollup")
        apply_schema(conn, [VIEWS_FILE])
        assert rollups(dashboard_db) == before
        assert query(dashboard_db, "SELECT count(*) FROM rating_interaction") == [(6,)]
    finally:
        conn.close()


def test_reset_empties_the_rollups_and_keeps_the_views(
    dashboard_db: DatabaseSettings,
) -> None:
    store(dashboard_db, SOME_RATINGS, SOME_REQUESTS)
    conn = connect(dashboard_db)
    try:
        reset_schema(conn, [VIEWS_FILE])
    finally:
        conn.close()
    assert query(dashboard_db, "SELECT count(*) FROM rating_hourly") == [(0,)]
    store(dashboard_db, SOME_RATINGS, SOME_REQUESTS)
    assert_rollups_add_up(dashboard_db)


def test_the_london_buckets_are_the_museum_clock_and_written_once(
    dashboard_db: DatabaseSettings,
) -> None:
    """The triggers, the rebuild and the views bucket time through one set of IMMUTABLE
    functions, which agree with the Python museum clock on every quarter hour around both of
    2026's clock changes (01:00 UTC on 29 March and 25 October)."""
    code = "\n".join(line.split("--")[0] for line in VIEWS_FILE.read_text().splitlines())
    assert code.count("AT TIME ZONE") == 1
    functions = ("london_time", "london_date", "london_hour", "london_quarter_hour")
    volatility = query(
        dashboard_db,
        "SELECT proname, provolatile FROM pg_proc WHERE proname = ANY(%s) ORDER BY 1",
        (list(functions),),
    )
    assert volatility == [(name, "i") for name in sorted(functions)]
    instants = [
        change + timedelta(minutes=minutes)
        for change in (datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 10, 25, 1, tzinfo=UTC))
        for minutes in range(-150, 151, 5)
    ]
    buckets = query(
        dashboard_db,
        "SELECT london_date(at), london_hour(at), london_quarter_hour(at)"
        " FROM unnest(%s::timestamptz[]) WITH ORDINALITY AS t(at, n) ORDER BY n",
        (instants,),
    )
    local = [at.astimezone(LONDON) for at in instants]
    assert buckets == [(t.date(), t.hour, t.hour * 4 + t.minute // 15) for t in local]

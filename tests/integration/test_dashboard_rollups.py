"""The charts read the coarsest rollup that answers them: their answers must be exactly those of a
direct count over the facts, under every kind of filter and range.

The facts' answers come from the same query functions run in a session where temporary views of
the same names (temporary objects come first in PostgreSQL's search path) count the facts of
rating_detail and request_detail instead of reading the rollups."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta

import pytest
from psycopg2.extensions import connection as Connection

from dashboard import queries
from dashboard.app import CHARTS
from dashboard.bench import fill, london_today
from dashboard.feed_queries import Span, stored_by_exhibition
from dashboard.filters import parse_filters
from lmnh.config import DatabaseSettings
from lmnh.database import connect
from lmnh.museum import LONDON
from tests.integration.dashboard_support import (
    RATINGS,
    REQUESTS,
    count_the_facts,
    dashboard_db,
    store,
)

pytestmark = pytest.mark.integration
__all__ = ["dashboard_db"]

TODAY = london_today()


YEAR_AGO = TODAY - timedelta(days=365)
FILTERS = [
    "",  # the default: the last 30 days
    f"from={YEAR_AGO}&to={TODAY}",  # everything generated
    "from=2026-03-01&to=2026-10-31",  # both clock changes, a month bucket
    "from=2026-03-28&to=2026-03-31",
    "from=2026-10-24&to=2026-10-26&heatmap=exhibition&granularity=quarter",
    f"from={YEAR_AGO}&to={TODAY}&hour_from=10&hour_to=14",
    "days=90&exhibition=EXH_01&exhibition=EXH_03&floor=1&floor=Vault&request=emergency"
    "&hour_from=10&hour_to=14&granularity=quarter&heatmap=exhibition",
    f"from={YEAR_AGO}&to={TODAY}&floor=2&request=assistance",
    "days=45&exhibition=EXH_05&hour_from=0&hour_to=9",
]


@pytest.fixture
def sessions(dashboard_db: DatabaseSettings) -> Iterator[tuple[Connection, Connection]]:
    """(a session that reads the rollups, one that counts the facts) over a year of generated
    interactions and the fixed dataset around 2026's clock changes."""
    fill(dashboard_db, 4_000, 365)
    store(dashboard_db, RATINGS, REQUESTS)
    rollups, facts = connect(dashboard_db), connect(dashboard_db)
    for conn in (rollups, facts):
        conn.autocommit = True
    try:
        with facts.cursor() as cur:
            count_the_facts(cur)
        yield rollups, facts
    finally:
        rollups.close()
        facts.close()


def test_every_chart_answers_as_a_count_of_the_facts(
    sessions: tuple[Connection, Connection],
) -> None:
    rollups, facts = sessions
    with rollups.cursor() as from_rollups, facts.cursor() as from_facts:
        nonempty = 0
        for query in FILTERS:
            pairs = [tuple(part.split("=", 1)) for part in query.split("&") if part]
            filters = parse_filters(pairs, TODAY)  # type: ignore[arg-type]
            for name, chart in sorted(CHARTS.items()):
                answer = chart(from_rollups, filters)
                assert answer == chart(from_facts, filters), (name, query)
                nonempty += any(row.get(key) for row in answer for key in ("ratings", "requests"))
        # The comparison is not between empty answers.
        assert nonempty > len(FILTERS) * len(CHARTS) // 2


def test_the_feed_days_answer_as_a_count_of_the_facts(
    sessions: tuple[Connection, Connection],
) -> None:
    rollups, facts = sessions
    for first in (TODAY - timedelta(days=6), date(2026, 10, 22), date(2026, 3, 27)):
        since = datetime.combine(first, datetime.min.time(), LONDON)
        until = datetime.combine(first + timedelta(days=7), datetime.min.time(), LONDON)
        span = Span(since, until, "day")
        with rollups.cursor() as from_rollups, facts.cursor() as from_facts:
            assert stored_by_exhibition(from_rollups, span) == stored_by_exhibition(
                from_facts, span
            )


def test_the_charts_read_the_daily_rollups_unless_they_need_the_hours(
    sessions: tuple[Connection, Connection],
) -> None:
    """Which rollup answers is seen by making each one wrong in turn: a range without an hour
    filter is answered by the daily rollup, one with it by the hourly one."""
    rollups, facts = sessions
    whole = parse_filters([("from", str(YEAR_AGO)), ("to", str(TODAY))], TODAY)
    hours = parse_filters([("from", str(YEAR_AGO)), ("to", str(TODAY)), ("hour_from", "8")], TODAY)
    with rollups.cursor() as from_rollups, facts.cursor() as from_facts:
        from_rollups.execute("UPDATE rating_rollup SET interactions = interactions + 1")
        assert queries.top_rated(from_rollups, whole) == queries.top_rated(from_facts, whole)
        assert queries.top_rated(from_rollups, hours) != queries.top_rated(from_facts, hours)
        from_rollups.execute("UPDATE rating_daily_rollup SET interactions = interactions + 1")
        assert queries.top_rated(from_rollups, whole) != queries.top_rated(from_facts, whole)
        from_rollups.execute("UPDATE request_rollup SET interactions = interactions + 1")
        assert queries.requests_by_floor(from_rollups, whole) == queries.requests_by_floor(
            from_facts, whole
        )
        for chart in (queries.requests_by_floor, queries.requests_by_time_of_day):
            assert chart(from_rollups, hours) != chart(from_facts, hours)

"""The dashboard's HTTP API fuzzed from its own OpenAPI document (schemathesis), in process, on a
database with data: no request gets a 5xx, every answer has a documented status and matches its
documented body, and invalid requests are refused. Then the requests that got a 500 before the
fuzzing found them, each now a 4xx that says what is wrong (or, for a rolling window that
reaches back past 0001-01-01, an answer)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from psycopg2.extensions import cursor as Cursor

import tests.integration.dashboard_fuzz_hooks  # noqa: F401 - registers the hook for the rules
from dashboard import app as dashboard_app
from dashboard.bench import fill
from dashboard.filters import Filters
from dashboard.pool import ConnectionPool, ValueRefused
from lmnh.config import DatabaseSettings, load_config
from tests.integration.dashboard_support import (
    RATINGS,
    REQUESTS,
    dashboard_db,
    staff_cookies,
    store,
)

pytestmark = pytest.mark.integration
__all__ = ["dashboard_db"]

# The same requests on every run (fixed seed, derandomized, no example database), and few
# enough per operation to take well under a minute on two cores.
GENERATION = {"max-examples": 500, "deterministic": True, "database": "none"}
CONFIG = schemathesis.Config.from_dict({"seed": 20261031, "generation": GENERATION})
POSITIVE = schemathesis.Config.from_dict(
    {"seed": 20261031, "generation": {**GENERATION, "mode": "positive"}}
)
# /api/now takes the same filters as the charts (parse_filters), whose refusals the charts'
# negative cases check. Its own negative cases were not stable between runs of the whole
# suite: one in which only a number drawn for a floor's name was "invalid" (it travels as a
# valid name) reached the check past the hook below. So it is fuzzed with valid requests only:
# no 5xx, and every answer as documented.
NOW = "/api/now"


# The document does not depend on the database, so it is read once, from an app that never
# connects; each test sends its requests to an app of its own on a database of its own.
def _schema(config: schemathesis.Config) -> Any:
    document = dashboard_app.create_app(load_config({}).database).openapi()
    return schemathesis.openapi.from_dict(document, config=config)


schema = _schema(CONFIG).exclude(path=NOW)
now_schema = _schema(POSITIVE).include(path=NOW)


@pytest.fixture
def app(dashboard_db: DatabaseSettings) -> FastAPI:
    """The app over 30 days of history and the fixed dataset of dashboard_support (with both of
    2026's clock changes)."""
    fill(dashboard_db, 2_000, 30)
    store(dashboard_db, RATINGS, REQUESTS)
    return dashboard_app.create_app(dashboard_db)


@pytest.fixture
def staff(dashboard_db: DatabaseSettings) -> dict[str, str]:
    """Signed in with every role: the fuzzing is of what the endpoints do, not of who may."""
    return staff_cookies(dashboard_db)


@schema.parametrize()
# The app only reads: one per test, shared by its examples, is what is meant.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_api_keeps_its_documented_contract(
    case: schemathesis.Case, app: FastAPI, staff: dict[str, str]
) -> None:
    case.call_and_validate(app=app, cookies=staff)


@now_schema.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_now_answers_every_valid_request_as_documented(
    case: schemathesis.Case, app: FastAPI, staff: dict[str, str]
) -> None:
    case.call_and_validate(app=app, cookies=staff)


def call(
    app: FastAPI, staff: dict[str, str], chart: str, **query: str
) -> tuple[int, dict[str, Any]]:
    """GET one chart in process; the answer must also match the document (status and body)."""
    case = schema["/api/charts/{name}"]["GET"].Case(path_parameters={"name": chart}, query=query)
    response = case.call(app=app, cookies=staff)
    case.validate_response(response)
    body: dict[str, Any] = response.json()
    return response.status_code, body


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        # 500: psycopg2 refused the NUL ("A string literal cannot contain NUL") at query time.
        ({"floor": "Vault\x00"}, "floor='Vault\\x00' holds a NUL"),
        # 500: int() refuses a string of over 4,300 digits with a ValueError.
        ({"days": "9" * 5000}, "days='9999999999"),
        # Refused before too, and named by the issue: a range that ends before it starts.
        ({"from": "9999-12-31"}, "from 9999-12-31 is after to"),
        # Accepted before (date.fromisoformat reads ISO week dates), against the document.
        ({"from": "2026-W01-1"}, "from='2026-W01-1' is not a date like 2026-10-31"),
    ],
)
def test_bad_filters_are_refused_with_a_reason(
    app: FastAPI, staff: dict[str, str], query: dict[str, str], problem: str
) -> None:
    status, body = call(app, staff, "requests-by-floor", **query)
    assert status == 400, body
    assert body["error"].startswith("the filters cannot be read: "), body
    assert any(text.startswith(problem) for text in body["problems"]), body


def test_a_rolling_window_stops_at_the_first_date_instead_of_overflowing(
    app: FastAPI,
    staff: dict[str, str],
) -> None:
    # to=0001-01-01 with the default 30 days reached back before date.min: OverflowError, 500.
    status, body = call(app, staff, "rating-over-time", to="0001-01-01")
    assert status == 200, body
    assert (body["filters"]["from"], body["filters"]["to"], body["rows"]) == (
        "0001-01-01",
        "0001-01-01",
        [],
    )
    status, body = call(app, staff, "popularity", to="0001-01-05", days="30")
    assert status == 200, body
    assert body["filters"]["from"] == "0001-01-01"


def test_a_value_the_database_refuses_is_a_client_error(
    app: FastAPI, staff: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def impossible_date(cur: Cursor, _filters: Filters) -> list[dict[str, Any]]:
        cur.execute("SELECT %s::date", ("2026-02-30",))
        return []

    monkeypatch.setitem(dashboard_app.CHARTS, "popularity", impossible_date)
    status, body = call(app, staff, "popularity")
    assert status == 400, body
    assert body["error"].startswith("the filters cannot be used: the database refused a value")
    assert "out of range" in body["error"]


def test_the_pool_keeps_serving_after_a_refused_value(dashboard_db: DatabaseSettings) -> None:
    pool = ConnectionPool(dashboard_db, size=1)
    try:
        with pytest.raises(ValueRefused), pool.cursor() as cur:
            cur.execute("SELECT %s::date", ("2026-02-30",))
        with pool.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        pool.close()

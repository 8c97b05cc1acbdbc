"""A schemathesis hook for the dashboard's API: the rules between filters that OpenAPI cannot
state (`dashboard.filters.RULES`), applied to the requests that schemathesis means as valid.

Each filter is documented on its own, so a schema-valid request can still break a rule between
two of them (from=2026-05-01&to=2026-04-01); the API rightly answers 400, which schemathesis
would report as a valid request refused. This hook mends such requests the least it can. Invalid
requests are left alone: they must be refused anyway.

Importing the module registers the hook: test_dashboard_fuzz.py does, and so does the CLI with
PYTHONPATH=<repo> SCHEMATHESIS_HOOKS=tests.integration.dashboard_fuzz_hooks (run it outside the
repo: it keeps a .schemathesis/ cache in its working directory).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Any

import schemathesis

from dashboard.filters import MAX_DAYS
from lmnh.museum import LONDON

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@schemathesis.hook
def map_case(_context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """Order from/to and hour_from/hour_to, and shorten a range of over MAX_DAYS days."""
    if case.meta is None or not case.meta.generation.mode.is_positive or not case.query:
        return case
    query = case.query
    start, given_end = _day(query.get("from")), _day(query.get("to"))
    if start is not None:  # without `from`, the rolling window always fits
        today = datetime.now(LONDON).date()
        end = given_end or today
        start, end = min(start, end), max(start, end)
        if (end - start).days >= MAX_DAYS:
            start = end - timedelta(days=MAX_DAYS - 1)
        query["from"] = start.isoformat()
        if given_end is not None or end != today:
            query["to"] = end.isoformat()
    low, high = _hour(query.get("hour_from")), _hour(query.get("hour_to"))
    if low is not None and high is not None and low > high:
        query["hour_from"], query["hour_to"] = high, low
    return case


def _day(value: Any) -> date | None:
    if not (isinstance(value, str) and _DATE.fullmatch(value)):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def _hour(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None

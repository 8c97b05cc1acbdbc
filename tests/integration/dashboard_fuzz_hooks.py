"""A schemathesis hook for the dashboard's API: the rules between filters that OpenAPI cannot
state (`dashboard.filters.RULES`), applied to the requests that schemathesis means as valid.

Each filter is documented on its own, so a schema-valid request can still break a rule between
two of them (from=2026-05-01&to=2026-04-01); the API rightly answers 400, which schemathesis
would report as a valid request refused. This hook mends such requests the least it can. Invalid
requests are left alone: they must be refused anyway.

A second hook drops the negative requests that are valid by the time they are sent: a query
value travels as text, so a parameter drawn as a number, a null or an object arrives as a
valid value ("-4.8e+16" is a floor name; null arrives empty, which means "not given"; an object
arrives as its keys), the API rightly
accepts it, and schemathesis, judging the value as drawn, would report it as invalid data
accepted.

Importing the module registers the hooks: test_dashboard_fuzz.py does, and so does the CLI with
PYTHONPATH=<repo> SCHEMATHESIS_HOOKS=tests.integration.dashboard_fuzz_hooks (run it outside the
repo: it keeps a .schemathesis/ cache in its working directory).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Any

import schemathesis
from schemathesis.core.parameters import ParameterLocation

from dashboard import feed
from dashboard.filters import MAX_DAYS, openapi_parameters
from lmnh.museum import LONDON

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_WHOLE = re.compile(r"[0-9]{1,9}")
_PARAMETERS = {
    parameter["name"]: parameter
    for parameter in (*openapi_parameters(), *feed.openapi_parameters())
}


@schemathesis.hook
def map_case(_context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """Send whole numbers as such, order from/to and hour_from/hour_to, and shorten a range of
    over MAX_DAYS days."""
    if case.meta is None or not case.meta.generation.mode.is_positive or not case.query:
        return case
    query = case.query
    # JSON Schema counts 3.0 as an integer; a client sends an integer as "3", never "3.0".
    for name, value in query.items():
        integer = _PARAMETERS.get(name, {}).get("schema", {}).get("type") == "integer"
        if integer and isinstance(value, float) and value.is_integer():
            query[name] = int(value)
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


@schemathesis.hook
def filter_case(_context: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    """Keep a negative request unless only its query was made invalid and, as sent, every
    query parameter is valid on its own."""
    meta = case.meta
    if meta is None or meta.generation.mode.is_positive:
        return True
    others = [where for where in meta.components if where is not ParameterLocation.QUERY]
    if not meta.is_negative_at(ParameterLocation.QUERY) or any(
        meta.is_negative_at(where) for where in others
    ):
        return True
    return not all(_sent_valid(name, value) for name, value in (case.query or {}).items())


def _wire(value: Any) -> list[str]:
    """A query value as the HTTP client sends it: repeated for a list, and for an object's
    keys; empty for a null, an empty list or an empty object."""
    if isinstance(value, dict):
        value = list(value)
    values = (value or [""]) if isinstance(value, list) else [value]
    return ["" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for v in values]


def _sent_valid(name: str, value: Any) -> bool:
    parameter = _PARAMETERS.get(name)
    if parameter is None:
        return False
    sent = _wire(value)
    schema = parameter["schema"]
    if schema["type"] == "array":
        return all(text == "" or _valid_text(text, schema["items"]) for text in sent)
    return len(sent) == 1 and (sent[0] == "" or _valid_text(sent[0], schema))


def _valid_text(text: str, schema: dict[str, Any]) -> bool:
    if schema["type"] == "integer":
        return bool(_WHOLE.fullmatch(text)) and schema["minimum"] <= int(text) <= schema["maximum"]
    if schema.get("format") == "date":
        return _day(text) is not None
    if "enum" in schema:
        return text in schema["enum"]
    return len(text) <= schema.get("maxLength", len(text)) and bool(
        re.fullmatch(schema.get("pattern", ".*"), text)
    )

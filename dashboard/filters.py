"""The dashboard's filters, read from a URL's query string (pure: no I/O, no clock of its own).

A view is shared by link, so every filter lives in the query string:

    from=2026-10-01&to=2026-10-31     London dates, inclusive (default: the last `days` days)
    days=30                           the rolling window used when `from` is not given
    exhibition=EXH_01&exhibition=EXH_03   repeatable; none means every exhibition
    floor=Vault&floor=2               repeatable; none means every floor
    request=emergency                 assistance or emergency; none means both
    hour_from=9&hour_to=12            hours of the museum's clock, inclusive: 09:00-12:59
    granularity=quarter               the time-of-day chart's step: hour (default) or quarter
    heatmap=exhibition                the heatmap's rows: floor (default) or exhibition

An empty value (`from=`) counts as not given. Every other value must be exactly as
`openapi_parameters` documents it: no surrounding spaces, lower-case words, ISO dates only.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal

from lmnh.errors import PipelineError

DEFAULT_DAYS = 30
MAX_DAYS = 366 * 20
LAST_HOUR = 23
# The rating-over-time line has a point a day up to about two months, a week up to about a
# year, a month beyond.
DAILY_BUCKETS_UP_TO = 62  # days
WEEKLY_BUCKETS_UP_TO = 400  # days
REQUEST_TYPES = {"assistance": 0, "emergency": 1}
GRANULARITIES = ("hour", "quarter")
HEATMAP_ROWS = ("floor", "exhibition")
FLOOR_NAME_MAX = 100
_PUBLIC_ID_PATTERN = "EXH_[0-9]{2,6}"
_PUBLIC_ID = re.compile(_PUBLIC_ID_PATTERN)
# Only the RFC 3339 shape: date.fromisoformat alone also takes 20261031 and 2026-W44-6.
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# A bounded run of ASCII digits: int() refuses strings of over 4,300 digits with a ValueError.
_WHOLE = re.compile(r"[0-9]{1,9}")
_CALENDAR = f"{date.min} to {date.max}"
_SHOWN_CHARS = 40
_ONE_VALUE = ("from", "to", "days", "request", "hour_from", "hour_to", "granularity", "heatmap")
_MANY_VALUES = ("exhibition", "floor")
FILTER_NAMES = (*_ONE_VALUE, *_MANY_VALUES)
# What narrows the Safety page's "Now": where and what, never when.
NOW_FILTER_NAMES = ("exhibition", "floor", "request")

Granularity = Literal["hour", "quarter"]
HeatmapRows = Literal["floor", "exhibition"]
Bucket = Literal["day", "week", "month"]


class FilterError(PipelineError):
    """The query string cannot be read; every problem is listed."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True, slots=True)
class Filters:
    """What every chart is restricted to. Empty tuples mean "all"."""

    start: date
    end: date
    exhibitions: tuple[str, ...] = ()
    floors: tuple[str, ...] = ()
    request_values: tuple[int, ...] = ()
    hour_from: int = 0
    hour_to: int = LAST_HOUR
    granularity: Granularity = "hour"
    heatmap: HeatmapRows = "floor"

    @property
    def bucket(self) -> Bucket:
        """The step of the rating-over-time line: fine for short ranges, coarse for long."""
        days = (self.end - self.start).days + 1
        if days <= DAILY_BUCKETS_UP_TO:
            return "day"
        if days <= WEEKLY_BUCKETS_UP_TO:
            return "week"
        return "month"

    def as_query(self) -> dict[str, str | list[str]]:
        """The filters as they would appear in a URL (for echoing back to the page)."""
        query: dict[str, str | list[str]] = {
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "exhibition": list(self.exhibitions),
            "floor": list(self.floors),
            "hour_from": str(self.hour_from),
            "hour_to": str(self.hour_to),
            "granularity": self.granularity,
            "heatmap": self.heatmap,
        }
        names = {value: name for name, value in REQUEST_TYPES.items()}
        if self.request_values:
            query["request"] = [names[value] for value in self.request_values]
        return query


def parse_filters(
    pairs: Iterable[tuple[str, str]], today: date, names: Collection[str] = FILTER_NAMES
) -> Filters:
    """Read the filters from query-string pairs; `today` is the London date now. An endpoint
    that takes only some of them passes their `names`: any other is unknown.

    Raises `FilterError` listing every problem: an unknown name, a value given twice where one
    is expected, a value outside what `openapi_parameters` documents (including text that
    PostgreSQL cannot hold), or a range that ends before it starts or is too long.
    """
    problems: list[str] = []
    single: dict[str, str] = {}
    many: dict[str, list[str]] = {name: [] for name in _MANY_VALUES}
    for name, value in pairs:
        if name not in names:
            problems.append(f"unknown filter {show_value(name)} (known: {', '.join(names)})")
        elif name in _MANY_VALUES:
            if value:
                many[name].append(value)
        elif name in single:
            problems.append(f"{name} is given more than once")
        elif value:
            single[name] = value

    def day(name: str) -> date | None:
        raw = single.get(name)
        if raw is None:
            return None
        if _DATE.fullmatch(raw):
            try:
                return date.fromisoformat(raw)
            except ValueError:
                pass
        problems.append(f"{name}={show_value(raw)} is not a date like 2026-10-31 ({_CALENDAR})")
        return None

    def whole(name: str, default: int, low: int, high: int) -> int:
        raw = single.get(name)
        if raw is None:
            return default
        if not (_WHOLE.fullmatch(raw) and low <= int(raw) <= high):
            problems.append(f"{name}={show_value(raw)} must be a whole number from {low} to {high}")
            return default
        return int(raw)

    days = whole("days", DEFAULT_DAYS, 1, MAX_DAYS)
    unreadable = len(problems)
    given_from, given_to = day("from"), day("to")
    end = given_to or today
    # Nothing is dated before 0001-01-01: a rolling window stops there instead of overflowing.
    start = given_from or end - timedelta(days=min(days - 1, (end - date.min).days))
    if len(problems) == unreadable:  # a range is judged only once both of its ends are read
        if start > end:
            today_note = "" if "to" in single else " (today)"
            problems.append(f"from {start} is after to {end}{today_note}")
        elif (end - start).days >= MAX_DAYS:
            problems.append(f"the date range is longer than {MAX_DAYS} days")

    hour_from = whole("hour_from", 0, 0, LAST_HOUR)
    hour_to = whole("hour_to", LAST_HOUR, 0, LAST_HOUR)
    if hour_from > hour_to:
        problems.append(f"hour_from {hour_from} is after hour_to {hour_to}")

    problems.extend(
        f"exhibition={show_value(public_id)} is not an exhibition id like EXH_01"
        for public_id in many["exhibition"]
        if not _PUBLIC_ID.fullmatch(public_id)
    )
    for floor in many["floor"]:
        if len(floor) > FLOOR_NAME_MAX:
            problems.append(f"floor={show_value(floor)} is longer than a floor name can be")
        elif not _fits_text(floor):
            problems.append(
                f"floor={show_value(floor)} holds a NUL or a lone surrogate: no name can"
            )

    request = single.get("request")
    if request is not None and request not in REQUEST_TYPES:
        problems.append(f"request={show_value(request)} must be assistance or emergency")
    granularity = single.get("granularity", "hour")
    if granularity not in GRANULARITIES:
        problems.append(f"granularity={show_value(granularity)} must be hour or quarter")
    heatmap = single.get("heatmap", "floor")
    if heatmap not in HEATMAP_ROWS:
        problems.append(f"heatmap={show_value(heatmap)} must be floor or exhibition")

    if problems:
        raise FilterError(problems)
    return Filters(
        start=start,
        end=end,
        exhibitions=tuple(sorted(set(many["exhibition"]))),
        floors=tuple(sorted(set(many["floor"]))),
        request_values=(REQUEST_TYPES[request],) if request else (),
        hour_from=hour_from,
        hour_to=hour_to,
        granularity="quarter" if granularity == "quarter" else "hour",
        heatmap="exhibition" if heatmap == "exhibition" else "floor",
    )


def show_value(value: str) -> str:
    """A value as an error quotes it: escaped (NUL, surrogates) and cut short."""
    return repr(value) if len(value) <= _SHOWN_CHARS else f"{value[:_SHOWN_CHARS]!r}..."


def _fits_text(value: str) -> bool:
    """Whether PostgreSQL can take `value` as text: UTF-8 without NUL (psycopg2 refuses NUL)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return "\x00" not in value


# Rules between filters, which OpenAPI cannot state per parameter; a 400 names the one broken.
RULES = (
    f"`from` is not after `to`; the range covers at most {MAX_DAYS} days; `hour_from` is not"
    " after `hour_to`; a filter that takes one value is given once; no other names are allowed."
)


def openapi_parameters(names: Collection[str] = FILTER_NAMES) -> list[dict[str, Any]]:
    """The filters (those `names`) as OpenAPI query parameters, built from the bounds that
    `parse_filters` enforces, so that the documented contract and the behaviour cannot drift
    apart."""

    def one(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
        # allowEmptyValue: `from=` is accepted and means "not given".
        return {
            "name": name,
            "in": "query",
            "required": False,
            "allowEmptyValue": True,
            "description": description,
            "schema": schema,
        }

    def many(name: str, item: dict[str, Any], description: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "style": "form",
            "explode": True,
            "description": f"{description} Repeatable; none means all; an empty value is ignored.",
            "schema": {"type": "array", "items": item},
        }

    def hour(default: int) -> dict[str, Any]:
        return {"type": "integer", "minimum": 0, "maximum": LAST_HOUR, "default": default}

    london_date = {"type": "string", "format": "date"}
    every = [
        one("from", london_date, f"First London date, inclusive ({_CALENDAR})."),
        one("to", london_date, f"Last London date, inclusive ({_CALENDAR}; default: today)."),
        one(
            "days",
            {"type": "integer", "minimum": 1, "maximum": MAX_DAYS, "default": DEFAULT_DAYS},
            "Length of the rolling window that ends on `to`, used when `from` is not given.",
        ),
        many(
            "exhibition",
            {"type": "string", "pattern": f"^({_PUBLIC_ID_PATTERN})?$"},
            "Exhibition id, like EXH_01.",
        ),
        many(
            "floor",
            {"type": "string", "maxLength": FLOOR_NAME_MAX, "pattern": "^[^\\x00]*$"},
            "Floor name, as /api/meta lists them (Vault, 1, 2, ...).",
        ),
        one(
            "request",
            {"type": "string", "enum": list(REQUEST_TYPES)},
            "Request type; none means both (ratings are not affected).",
        ),
        one("hour_from", hour(0), "First hour of the museum's day, inclusive."),
        one("hour_to", hour(LAST_HOUR), "Last hour of the museum's day, inclusive (12: 12:59)."),
        one(
            "granularity",
            {"type": "string", "enum": list(GRANULARITIES), "default": "hour"},
            "The step of requests-by-time-of-day.",
        ),
        one(
            "heatmap",
            {"type": "string", "enum": list(HEATMAP_ROWS), "default": "floor"},
            "The rows of request-heatmap.",
        ),
    ]
    return [parameter for parameter in every if parameter["name"] in names]

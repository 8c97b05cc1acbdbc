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
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from lmnh.errors import PipelineError

DEFAULT_DAYS = 30
MAX_DAYS = 366 * 20
REQUEST_TYPES = {"assistance": 0, "emergency": 1}
_PUBLIC_ID = re.compile(r"EXH_[0-9]{2,6}")
_ONE_VALUE = ("from", "to", "days", "request", "hour_from", "hour_to", "granularity", "heatmap")
_MANY_VALUES = ("exhibition", "floor")

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
    hour_to: int = 23
    granularity: Granularity = "hour"
    heatmap: HeatmapRows = "floor"

    @property
    def bucket(self) -> Bucket:
        """The step of the rating-over-time line: fine for short ranges, coarse for long."""
        days = (self.end - self.start).days + 1
        if days <= 62:
            return "day"
        if days <= 400:
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


def parse_filters(pairs: Iterable[tuple[str, str]], today: date) -> Filters:
    """Read the filters from query-string pairs; `today` is the London date now.

    Raises `FilterError` listing every problem: an unknown name, a value given twice where one
    is expected, a date or hour that cannot be read, or a range that ends before it starts.
    """
    problems: list[str] = []
    single: dict[str, str] = {}
    many: dict[str, list[str]] = {name: [] for name in _MANY_VALUES}
    for name, raw in pairs:
        value = raw.strip()
        if name in _MANY_VALUES:
            if value:
                many[name].append(value)
        elif name in _ONE_VALUE:
            if name in single:
                problems.append(f"{name} is given more than once")
            elif value:
                single[name] = value
        else:
            known = ", ".join((*_ONE_VALUE, *_MANY_VALUES))
            problems.append(f"unknown filter {name!r} (known: {known})")

    def day(name: str) -> date | None:
        if name not in single:
            return None
        try:
            return date.fromisoformat(single[name])
        except ValueError:
            problems.append(f"{name}={single[name]!r} is not a date like 2026-10-31")
            return None

    def whole(name: str, default: int, low: int, high: int) -> int:
        raw = single.get(name)
        if raw is None:
            return default
        if not (raw.isascii() and raw.isdigit() and low <= int(raw) <= high):
            problems.append(f"{name}={raw!r} must be a whole number from {low} to {high}")
            return default
        return int(raw)

    days = whole("days", DEFAULT_DAYS, 1, MAX_DAYS)
    start, end = day("from"), day("to")
    if end is None:
        end = today
    if start is None:
        start = end - timedelta(days=days - 1)
    if start > end:
        problems.append(f"from {start} is after to {end}")
    elif (end - start).days >= MAX_DAYS:
        problems.append(f"the date range is longer than {MAX_DAYS} days")

    hour_from = whole("hour_from", 0, 0, 23)
    hour_to = whole("hour_to", 23, 0, 23)
    if hour_from > hour_to:
        problems.append(f"hour_from {hour_from} is after hour_to {hour_to}")

    for public_id in many["exhibition"]:
        if not _PUBLIC_ID.fullmatch(public_id):
            problems.append(f"exhibition={public_id!r} is not an exhibition id like EXH_01")
    for floor in many["floor"]:
        if len(floor) > 100:
            problems.append(f"floor={floor[:20]!r}... is longer than a floor name can be")

    request_values: tuple[int, ...] = ()
    if "request" in single:
        request = single["request"].lower()
        if request in REQUEST_TYPES:
            request_values = (REQUEST_TYPES[request],)
        else:
            problems.append(f"request={single['request']!r} must be assistance or emergency")

    granularity = single.get("granularity", "hour")
    if granularity not in ("hour", "quarter"):
        problems.append(f"granularity={granularity!r} must be hour or quarter")
        granularity = "hour"
    heatmap = single.get("heatmap", "floor")
    if heatmap not in ("floor", "exhibition"):
        problems.append(f"heatmap={heatmap!r} must be floor or exhibition")
        heatmap = "floor"

    if problems:
        raise FilterError(problems)
    return Filters(
        start=start,
        end=end,
        exhibitions=tuple(sorted(set(many["exhibition"]))),
        floors=tuple(sorted(set(many["floor"]))),
        request_values=request_values,
        hour_from=hour_from,
        hour_to=hour_to,
        granularity="quarter" if granularity == "quarter" else "hour",
        heatmap="exhibition" if heatmap == "exhibition" else "floor",
    )

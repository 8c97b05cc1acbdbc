"""One SQL aggregate per chart, over the reporting views of views.sql (and the rating and
request tables, for their names).

Each chart reads the coarsest rollup that answers it exactly: the daily views when it needs no
time of day and the hours are not filtered (ten times fewer rows than the hourly ones, which
matters over long ranges), the hourly or quarter-hourly ones otherwise. Either way its cost
grows with the days of the range, never with the number of interactions.

Every function takes an open cursor and the page's `Filters`, and returns JSON-ready rows:
dates as ISO strings, counts as ints, averages as floats. Categories with nothing to count
(an exhibition without requests, an hour without ratings) are returned with zero, so that a
chart shows an honest gap instead of leaving the category out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from psycopg2 import sql
from psycopg2.extensions import cursor as Cursor

from dashboard.filters import LAST_HOUR, Filters
from lmnh.museum import CLOSES, OPENS

Row = dict[str, Any]

# The museum's opening hours, as hours and as quarter hours of the day (08:45-18:15 London is
# hours 8-18, quarters 35-73): the time-of-day charts show these slots, zero where quiet.
OPENING_HOURS = (OPENS.hour, CLOSES.hour)
OPENING_QUARTERS = (OPENS.hour * 4 + OPENS.minute // 15, CLOSES.hour * 4 + CLOSES.minute // 15)


def _conditions(filters: Filters, *, requests: bool) -> sql.Composable:
    """The WHERE clause of a summary view for these filters (parameters by name)."""
    parts = [sql.SQL("london_date BETWEEN %(start)s AND %(end)s")]
    if _hours_filtered(filters):
        parts.append(sql.SQL("hour_of_day BETWEEN %(hour_from)s AND %(hour_to)s"))
    if filters.exhibitions:
        parts.append(sql.SQL("public_id = ANY(%(exhibitions)s)"))
    if filters.floors:
        parts.append(sql.SQL("floor_name = ANY(%(floors)s)"))
    if requests and filters.request_values:
        parts.append(sql.SQL("request_value = ANY(%(request_values)s)"))
    return sql.SQL(" AND ").join(parts)


def _hours_filtered(filters: Filters) -> bool:
    return filters.hour_from > 0 or filters.hour_to < LAST_HOUR


def _ratings(filters: Filters) -> sql.Composable:
    """The rating view that answers a chart without a time of day under these filters."""
    return sql.Identifier("rating_hourly" if _hours_filtered(filters) else "rating_daily")


def _requests(filters: Filters, *, time_of_day: bool = False) -> sql.Composable:
    """Where a request chart reads its counts and under which conditions, as `FROM` takes
    them (`<source> WHERE <conditions>`). Without an hour filter or
    a time of day: request_daily. Otherwise the quarter-hourly rollup, summed over the range's
    dates by ids first and named after, the columns of request_quarter_hourly but the date:
    the filters become conditions on the rollup's key, checked inside its index, and the rows
    left to name are a few hundred however long the range (`time_of_day`: the chart groups by
    hour or quarter hour)."""
    if not (time_of_day or _hours_filtered(filters)):
        return sql.SQL("request_daily WHERE {}").format(_conditions(filters, requests=True))
    return sql.SQL(
        "(SELECT (u.quarter_hour / 4)::smallint AS hour_of_day,"
        "  make_time(u.quarter_hour / 4, (u.quarter_hour %% 4) * 15, 0) AS quarter_hour_start,"
        "  e.public_id, e.exhibition_name, e.floor_name, q.request_value, u.interactions"
        " FROM (SELECT quarter_hour, exhibition_id, request_id,"
        "   sum(interactions)::bigint AS interactions FROM request_rollup"
        "   WHERE london_date BETWEEN %(start)s AND %(end)s"
        "   AND quarter_hour BETWEEN %(hour_from)s * 4 AND %(hour_to)s * 4 + 3"
        "   AND exhibition_id = ANY(ARRAY(SELECT e.exhibition_id FROM exhibition_overview AS e"
        "    WHERE {exhibitions}))"
        "   AND request_id = ANY(ARRAY(SELECT request_id FROM request WHERE {types}))"
        "   GROUP BY 1, 2, 3) AS u"
        " JOIN exhibition_overview AS e USING (exhibition_id)"
        " JOIN request AS q USING (request_id)) AS by_time_of_day WHERE TRUE"
    ).format(
        exhibitions=_exhibition_conditions(filters),
        types=_request_type_conditions(filters),
    )


def _exhibition_conditions(filters: Filters, alias: str = "e") -> sql.Composable:
    """Which exhibitions the filters keep, as a WHERE clause on exhibition_overview `alias`."""
    parts: list[sql.Composable] = [sql.SQL("TRUE")]
    if filters.exhibitions:
        parts.append(sql.SQL("{}.public_id = ANY(%(exhibitions)s)").format(sql.Identifier(alias)))
    if filters.floors:
        parts.append(sql.SQL("{}.floor_name = ANY(%(floors)s)").format(sql.Identifier(alias)))
    return sql.SQL(" AND ").join(parts)


def _request_type_conditions(filters: Filters) -> sql.Composable:
    if filters.request_values:
        return sql.SQL("request_value = ANY(%(request_values)s)")
    return sql.SQL("TRUE")


def _parameters(filters: Filters) -> dict[str, Any]:
    lowest_hour = max(filters.hour_from, OPENING_HOURS[0])
    highest_hour = min(filters.hour_to, OPENING_HOURS[1])
    return {
        "start": filters.start,
        "end": filters.end,
        "hour_from": filters.hour_from,
        "hour_to": filters.hour_to,
        "exhibitions": list(filters.exhibitions),
        "floors": list(filters.floors),
        "request_values": list(filters.request_values),
        "bucket": filters.bucket,
        "first_hour": lowest_hour,
        "last_hour": highest_hour,
        "first_quarter": max(filters.hour_from * 4, OPENING_QUARTERS[0]),
        "last_quarter": min(filters.hour_to * 4 + 3, OPENING_QUARTERS[1]),
    }


def _rows(cur: Cursor, query: sql.Composable, filters: Filters) -> list[Row]:
    cur.execute(query, _parameters(filters))
    names = [column.name for column in cur.description or ()]
    return [{name: _json(value) for name, value in zip(names, row, strict=True)} for row in cur]


def _json(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "as_integer_ratio") and not isinstance(value, int | float):
        return float(value)  # Decimal from sum()
    return value


def floor_order(name: str) -> tuple[int, int, str]:
    """Floors bottom to top: named levels (the Vault) first, then numbered floors."""
    return (1, int(name), "") if name.isdigit() else (0, 0, name)


def _by_floor(rows: Sequence[Row], key: str = "floor_name") -> list[Row]:
    return sorted(rows, key=lambda row: floor_order(str(row[key])))


# Exhibitions page ----------------------------------------------------------------------------


def rating_over_time(cur: Cursor, filters: Filters) -> list[Row]:
    """Average rating per exhibition per day, week or month (`filters.bucket`)."""
    query = sql.SQL(
        "SELECT date_trunc(%(bucket)s, london_date)::date AS period, public_id, exhibition_name,"
        " sum(rating_value * interactions)::float8 / sum(interactions) AS average_rating,"
        " sum(interactions)::bigint AS ratings"
        " FROM {} WHERE {} GROUP BY 1, 2, 3 ORDER BY 1, 2"
    ).format(_ratings(filters), _conditions(filters, requests=False))
    return _rows(cur, query, filters)


def popularity(cur: Cursor, filters: Filters) -> list[Row]:
    """Interactions (ratings and requests) per exhibition, most popular first."""
    query = sql.SQL(
        "WITH ratings AS (SELECT public_id, sum(interactions) AS n FROM {rating_view}"
        "   WHERE {ratings} GROUP BY 1),"
        " requests AS (SELECT public_id, sum(interactions) AS n FROM {requests}"
        "   GROUP BY 1)"
        " SELECT e.public_id, e.exhibition_name, e.floor_name,"
        "  coalesce(r.n, 0)::bigint AS ratings, coalesce(q.n, 0)::bigint AS requests,"
        "  (coalesce(r.n, 0) + coalesce(q.n, 0))::bigint AS interactions"
        " FROM exhibition_overview AS e"
        " LEFT JOIN ratings AS r USING (public_id) LEFT JOIN requests AS q USING (public_id)"
        " WHERE {exhibitions} ORDER BY interactions DESC, e.public_id"
    ).format(
        rating_view=_ratings(filters),
        ratings=_conditions(filters, requests=False),
        requests=_requests(filters),
        exhibitions=_exhibition_conditions(filters),
    )
    return _rows(cur, query, filters)


def top_rated(cur: Cursor, filters: Filters) -> list[Row]:
    """Exhibitions by average rating, best first, with their count and rating distribution.

    Exhibitions without a rating in the range are left out: they have no average to rank.
    Ties on the average go to the exhibition with more ratings.
    """
    counts = sql.SQL(", ").join(
        sql.SQL(
            "coalesce(sum(interactions) FILTER (WHERE rating_value = {value}), 0)::bigint AS {name}"
        ).format(value=sql.Literal(value), name=sql.Identifier(f"rating_{value}"))
        for value in range(5)
    )
    query = sql.SQL(
        "SELECT public_id, exhibition_name, floor_name, sum(interactions)::bigint AS ratings,"
        " sum(rating_value * interactions)::float8 / sum(interactions) AS average_rating, {}"
        " FROM {} WHERE {}"
        " GROUP BY 1, 2, 3 ORDER BY average_rating DESC, ratings DESC, public_id"
    ).format(counts, _ratings(filters), _conditions(filters, requests=False))
    rows = _rows(cur, query, filters)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
        row["distribution"] = [row.pop(f"rating_{value}") for value in range(5)]
    return rows


# Safety page ---------------------------------------------------------------------------------


def request_share(cur: Cursor, filters: Filters) -> list[Row]:
    """Assistance and emergency requests: how many of each, and their share of all."""
    query = sql.SQL(
        "WITH counted AS (SELECT request_value, sum(interactions) AS n"
        "   FROM {} GROUP BY 1)"
        " SELECT t.request_value, t.request_description, coalesce(c.n, 0)::bigint AS requests,"
        "  coalesce(c.n::float8 / nullif(sum(c.n) OVER (), 0), 0) AS share"
        " FROM request AS t LEFT JOIN counted AS c USING (request_value)"
        " WHERE {} ORDER BY t.request_value"
    ).format(
        _requests(filters),
        _request_type_conditions(filters),
    )
    return _rows(cur, query, filters)


def requests_by_time_of_day(cur: Cursor, filters: Filters) -> list[Row]:
    """Requests per hour (or quarter hour) of the museum's day, per request type.

    Every slot of the opening hours within the hour filter is listed, zero when quiet, and so
    is a slot outside them that has a request, for every request type.
    """
    if filters.granularity == "quarter":
        slots = sql.SQL(
            "SELECT make_time(q / 4, (q %% 4) * 15, 0) AS slot"
            " FROM generate_series(%(first_quarter)s, %(last_quarter)s) AS q"
        )
        slot = sql.SQL("quarter_hour_start")
    else:
        slots = sql.SQL(
            "SELECT make_time(h, 0, 0) AS slot"
            " FROM generate_series(%(first_hour)s, %(last_hour)s) AS h"
        )
        slot = sql.SQL("make_time(hour_of_day, 0, 0)")
    query = sql.SQL(
        "WITH slots AS ({slots}),"
        " types AS (SELECT request_value, request_description FROM request WHERE {types}),"
        " counted AS (SELECT {slot} AS slot, request_value, sum(interactions) AS n"
        "   FROM {source} GROUP BY 1, 2),"
        " grid AS (SELECT slot, request_value, request_description"
        "   FROM (SELECT slot FROM slots UNION SELECT slot FROM counted) AS every_slot, types)"
        " SELECT to_char(g.slot, 'HH24:MI') AS slot, g.request_value, g.request_description,"
        "  coalesce(c.n, 0)::bigint AS requests"
        " FROM grid AS g LEFT JOIN counted AS c USING (slot, request_value)"
        " ORDER BY g.slot, g.request_value"
    ).format(
        slots=slots,
        types=_request_type_conditions(filters),
        slot=slot,
        source=_requests(filters, time_of_day=True),
    )
    return _rows(cur, query, filters)


def requests_by_floor(cur: Cursor, filters: Filters) -> list[Row]:
    """Requests per floor and request type, floors bottom to top."""
    query = sql.SQL(
        "WITH floors AS (SELECT DISTINCT e.floor_name FROM exhibition_overview AS e"
        "   WHERE {exhibitions}),"
        " types AS (SELECT request_value, request_description FROM request WHERE {types}),"
        " counted AS (SELECT floor_name, request_value, sum(interactions) AS n"
        "   FROM {view} GROUP BY 1, 2)"
        " SELECT f.floor_name, t.request_value, t.request_description,"
        "  coalesce(c.n, 0)::bigint AS requests"
        " FROM floors AS f CROSS JOIN types AS t"
        " LEFT JOIN counted AS c ON c.floor_name = f.floor_name"
        "  AND c.request_value = t.request_value"
        " ORDER BY t.request_value"
    ).format(
        exhibitions=_exhibition_conditions(filters),
        types=_request_type_conditions(filters),
        view=_requests(filters),
    )
    return _by_floor(_rows(cur, query, filters))


def requests_by_exhibition(cur: Cursor, filters: Filters) -> list[Row]:
    """Requests per exhibition and request type, in exhibition order."""
    query = sql.SQL(
        "WITH types AS (SELECT request_value, request_description FROM request WHERE {types}),"
        " counted AS (SELECT public_id, request_value, sum(interactions) AS n"
        "   FROM {view} GROUP BY 1, 2)"
        " SELECT e.public_id, e.exhibition_name, e.floor_name, t.request_value,"
        "  t.request_description, coalesce(c.n, 0)::bigint AS requests"
        " FROM exhibition_overview AS e CROSS JOIN types AS t"
        " LEFT JOIN counted AS c ON c.public_id = e.public_id"
        "  AND c.request_value = t.request_value"
        " WHERE {exhibitions} ORDER BY e.public_id, t.request_value"
    ).format(
        types=_request_type_conditions(filters),
        view=_requests(filters),
        exhibitions=_exhibition_conditions(filters),
    )
    return _rows(cur, query, filters)


def request_heatmap(cur: Cursor, filters: Filters) -> list[Row]:
    """Requests (of the types filtered) per floor or exhibition and hour of the museum's day."""
    if filters.heatmap == "exhibition":
        place = sql.SQL("public_id || ' ' || exhibition_name")
    else:
        place = sql.SQL("floor_name")
    query = sql.SQL(
        "WITH places AS (SELECT DISTINCT {place} AS place FROM exhibition_overview AS e"
        "   WHERE {exhibitions}),"
        " hours AS (SELECT h::smallint AS hour_of_day"
        "   FROM generate_series(%(first_hour)s, %(last_hour)s) AS h),"
        " counted AS (SELECT {place} AS place, hour_of_day, sum(interactions) AS n"
        "   FROM {source} GROUP BY 1, 2),"
        " grid AS (SELECT place, hour_of_day"
        "   FROM (SELECT place FROM places UNION SELECT place FROM counted) AS every_place,"
        "   (SELECT hour_of_day FROM hours UNION SELECT hour_of_day FROM counted) AS every_hour)"
        " SELECT g.place, g.hour_of_day, coalesce(c.n, 0)::bigint AS requests"
        " FROM grid AS g LEFT JOIN counted AS c USING (place, hour_of_day)"
        " ORDER BY g.place, g.hour_of_day"
    ).format(
        place=place,
        exhibitions=_exhibition_conditions(filters),
        source=_requests(filters, time_of_day=True),
    )
    rows = _rows(cur, query, filters)
    return _by_floor(rows, "place") if filters.heatmap == "floor" else rows


# Both pages ----------------------------------------------------------------------------------


def freshness(cur: Cursor) -> Row:
    """When the newest interaction happened and when the pipeline last stored a batch."""
    cur.execute(
        "SELECT latest_interaction_at, latest_rating_at, latest_request_at, last_loaded_at,"
        " now() AS queried_at FROM data_freshness"
    )
    names = [column.name for column in cur.description or ()]
    row = cur.fetchone() or (None,) * len(names)
    return {name: _json(value) for name, value in zip(names, row, strict=True)}


def choices(cur: Cursor) -> Row:
    """What the filters and legends name: exhibitions, floors (bottom to top), request types,
    rating values."""
    cur.execute(
        "SELECT public_id, exhibition_name, floor_name FROM exhibition_overview ORDER BY public_id"
    )
    exhibitions = [
        {"public_id": public_id, "exhibition_name": name, "floor_name": floor}
        for public_id, name, floor in cur.fetchall()
    ]
    floors = sorted({row["floor_name"] for row in exhibitions}, key=floor_order)
    cur.execute("SELECT request_value, request_description FROM request ORDER BY request_value")
    request_types = [
        {"request_value": value, "request_description": description}
        for value, description in cur.fetchall()
    ]
    cur.execute("SELECT rating_value, rating_description FROM rating ORDER BY rating_value")
    ratings = [
        {"rating_value": value, "rating_description": description}
        for value, description in cur.fetchall()
    ]
    return {
        "exhibitions": exhibitions,
        "floors": floors,
        "request_types": request_types,
        "ratings": ratings,
    }

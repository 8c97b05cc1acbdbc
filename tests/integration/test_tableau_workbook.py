"""The Tableau workbook against real PostgreSQL: its data sources' columns exist in the views
with compatible types (as the read-only lmnh_reader role sees them), the extract variant matches
the .hyper that `python -m dashboard.tableau hyper` writes, and every chart shows the numbers of
the web page. For that, each worksheet's aggregate is computed from the workbook's XML alone
(its shelves, aggregations, calculations, filters, blends and sorts, turned into SQL over the
views) and compared with the web dashboard's JSON under the same filters."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from psycopg2 import sql

from dashboard.bench import fill
from dashboard.tableau import database_problems, export_hyper, extract_problems, view_columns
from dashboard.tableau.workbook import DASHBOARDS, EXTRACT_FILE, LIVE_FILE, WORKBOOK_DIR
from lmnh.config import DatabaseSettings, Secret
from lmnh.database import connect, execute_outside_transaction
from lmnh.museum import LONDON
from tests.integration.dashboard_support import (
    RATINGS,
    REQUESTS,
    Dashboard,
    dashboard_db,
    dashboard_process,
    store,
)

pytestmark = pytest.mark.integration
__all__ = ["dashboard_db"]

QUALIFIED = re.compile(r"\[([^\]]+)\]\.(\[[^\]]+\])")
TOKEN = re.compile(
    r"\s*(\[[^\]]+\]\.\[[^\]]+\]|\[[^\]]+\]|\"[^\"]*\"|'[^']*'|\d+(?:\.\d+)?|\w+|<=|>=|[-+*/=<>(),])"
)
PSEUDO = ("[:Measure Names]", "[Multiple Values]")


def workbook(name: str = LIVE_FILE) -> ET.Element:
    return ET.parse(WORKBOOK_DIR / name).getroot()  # noqa: S314 - our own checked-in file


@pytest.fixture
def reader(local_postgres: None, dashboard_db: DatabaseSettings) -> Iterator[DatabaseSettings]:
    """A login of the read-only group role lmnh_reader, as Tableau's user would have (CREATE
    ROLE: on the local server only)."""
    name = f"tableau_{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    execute_outside_transaction(
        dashboard_db,
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE lmnh_reader").format(
            sql.Identifier(name), sql.Literal(password)
        ),
    )
    yield replace(dashboard_db, username=name, password=Secret(password))
    execute_outside_transaction(
        dashboard_db, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name))
    )


# ---- The columns ------------------------------------------------------------------------------


def test_every_data_source_column_is_in_its_view_for_the_reader(reader: DatabaseSettings) -> None:
    conn = connect(reader)
    try:
        columns = view_columns(conn)
        root = workbook()
        assert database_problems(root, columns) == []
        # The reader may read every one of them (information_schema lists only granted columns).
        for source in root.findall("./datasources/datasource"):
            relation = source.find("connection/relation")
            if relation is None:
                continue
            names = [c.get("name", "")[1:-1] for c in source.findall("column[@role]")]
            names = [n for n in names if n in {c.name for c in columns[relation.get("name", "")]}]
            with conn, conn.cursor() as cur:
                cur.execute(
                    sql.SQL("SELECT {} FROM {} LIMIT 1").format(
                        sql.SQL(", ").join(map(sql.Identifier, names)),
                        sql.Identifier(relation.get("name", "")),
                    )
                )
    finally:
        conn.close()


def test_a_field_missing_from_the_view_fails(reader: DatabaseSettings) -> None:
    root = workbook()
    column = root.find(
        "./datasources/datasource[@name='federated.rating_hourly']/column[@name='[floor_name]']"
    )
    assert column is not None
    column.set("name", "[floor]")
    retyped = root.find(
        "./datasources/datasource[@name='federated.exhibition_overview']"
        "/column[@name='[exhibition_start_date]']"
    )
    assert retyped is not None
    retyped.set("datatype", "datetime")
    conn = connect(reader)
    try:
        assert database_problems(root, view_columns(conn)) == [
            "federated.rating_hourly: column [floor] is not in PostgreSQL's view rating_hourly",
            "federated.exhibition_overview: column [exhibition_start_date] is datetime in the"
            " workbook, date in PostgreSQL's view exhibition_overview",
        ]
    finally:
        conn.close()


def test_the_extract_variant_reads_the_tables_of_the_hyper_command(
    dashboard_db: DatabaseSettings, tmp_path: Path
) -> None:
    pytest.importorskip("tableauhyperapi", reason="the optional tableau extra")
    from tableauhyperapi import Connection, HyperProcess, Telemetry

    store(dashboard_db, RATINGS, REQUESTS)
    out = tmp_path / "lmnh.hyper"
    conn = connect(dashboard_db)
    try:
        export_hyper(conn, out)
    finally:
        conn.close()
    with (
        HyperProcess(
            telemetry=Telemetry.DO_NOT_SEND_USAGE_DATA_TO_TABLEAU, parameters={"log_config": ""}
        ) as hyper,
        Connection(endpoint=hyper.endpoint, database=out) as extract,
    ):
        tables = {
            table.name.unescaped: {
                column.name.unescaped: column.type.tag.name
                for column in extract.catalog.get_table_definition(table).columns
            }
            for table in extract.catalog.get_table_names("Extract")
        }
    root = workbook(EXTRACT_FILE)
    for source in root.findall("./datasources/datasource/connection"):
        relation = source.find("relation")
        assert relation is not None
        assert relation.get("table") == f"[Extract].[{relation.get('name')}]"
        assert relation.get("name") in tables
    assert extract_problems(root, tables) == []
    del tables["rating_hourly"]["interactions"]
    tables["request_quarter_hourly"]["extra"] = "TEXT"
    assert extract_problems(root, tables) == [
        "federated.rating_hourly: column [interactions] is not in the extract's table"
        " rating_hourly",
        "the extract's table request_quarter_hourly has a column extra the workbook lacks",
    ]


# ---- The numbers: a worksheet's aggregate, read from the XML, as SQL ----------------------------


@dataclass(frozen=True)
class Choice:
    """What a user picks in the workbook: its parameters and its two quick filters."""

    parameters: dict[str, Any]
    exhibitions: tuple[str, ...] = ()  # labels of [exhibition]; none: all
    floors: tuple[str, ...] = ()


class Worksheet:
    """One worksheet of the workbook, computed as Tableau would: its dimensions grouped, its
    measures aggregated, its filters applied, blended measures joined on the linking fields."""

    def __init__(self, root: ET.Element, name: str) -> None:
        found = root.find(f"./worksheets/worksheet[@name='{name}']")
        assert found is not None, name
        self.root, self.sheet = root, found
        self.sources = {ds.get("name", ""): ds for ds in root.findall("./datasources/datasource")}
        self.view = found.find("table/view")
        assert self.view is not None
        listed = [ds.get("name", "") for ds in self.view.findall("datasources/datasource")]
        self.primary = next(name for name in listed if name != "Parameters")

    def fields_on_shelves(self) -> list[str]:
        table = self.sheet.find("table")
        assert table is not None
        text = f"{table.findtext('rows') or ''} {table.findtext('cols') or ''}"
        found = [f"[{ds}].{field}" for ds, field in QUALIFIED.findall(text)]
        found += [e.get("column", "") for e in table.findall("panes/pane/encodings/*")]
        found += [
            g.get("member", "").strip('"')
            for g in self.view.iter("groupfilter")
            if g.get("level") == "[:Measure Names]"
        ]
        return [f for f in dict.fromkeys(found) if QUALIFIED.fullmatch(f)[2] not in PSEUDO]

    def instance(self, qualified: str) -> ET.Element:
        source, name = QUALIFIED.fullmatch(qualified).groups()
        for dependencies in self.view.findall("datasource-dependencies"):
            if dependencies.get("datasource") == source:
                found = dependencies.find(f"column-instance[@name='{name}']")
                if found is not None:
                    return found
        raise AssertionError(f"{self.sheet.get('name')} does not declare {qualified}")

    def field_sql(self, source: str, name: str) -> str:
        """A field as SQL: a view's column, or a calculation translated."""
        column = self.sources[source].find(f"column[@name='{name}']")
        assert column is not None, (source, name)
        calculation = column.find("calculation")
        if calculation is None:
            return '"' + name[1:-1] + '"'
        tokens = TOKEN.findall(calculation.get("formula", ""))
        return "(" + self.translate(tokens, source, column.get("datatype") == "string") + ")"

    def translate(self, tokens: list[str], source: str, strings: bool) -> str:
        """Tableau's formula language, the part these calculations use, as PostgreSQL."""
        words = {"IF": "CASE WHEN", "ELSEIF": "WHEN", "SUM": "sum", "INT": "int4"}
        out: list[str] = []
        position = 0
        while position < len(tokens):
            piece = tokens[position]
            if piece in ("DATETRUNC", "DATEDIFF", "DATEPART"):
                arguments, position = self.arguments(tokens, position + 1)
                parts = [self.translate(arg, source, strings) for arg in arguments]
                if piece == "DATETRUNC":
                    out.append(f"date_trunc({parts[0]}, {parts[1]})::date")
                elif piece == "DATEDIFF":
                    out.append(f"(({parts[2]}) - ({parts[1]}))")
                else:
                    out.append(f"date_part({parts[0]}, {parts[1]})")
                continue
            if piece.startswith("[Parameters]."):
                out.append(f"%({piece.split('.')[1][1:-1]})s")
            elif piece.startswith("["):
                out.append(self.field_sql(source, piece))
            elif piece.startswith('"'):
                out.append("'" + piece[1:-1].replace("'", "''") + "'")
            elif piece == "+" and strings:
                out.append("||")
            else:
                out.append(words.get(piece, piece))
            position += 1
        return " ".join(out)

    @staticmethod
    def arguments(tokens: list[str], start: int) -> tuple[list[list[str]], int]:
        """The comma-separated arguments of the call whose `(` is at `start`; and what follows."""
        depth, arguments, position = 0, [[]], start
        while True:
            piece = tokens[position]
            position += 1
            if piece == "(":
                depth += 1
                if depth == 1:
                    continue
            elif piece == ")":
                depth -= 1
                if depth == 0:
                    return arguments, position
            elif piece == "," and depth == 1:
                arguments.append([])
                continue
            arguments[-1].append(piece)

    def measure_sql(self, qualified: str) -> str:
        instance = self.instance(qualified)
        source = QUALIFIED.fullmatch(qualified)[1]
        field = self.field_sql(source, instance.get("column", ""))
        derivation = instance.get("derivation")
        return {"Sum": f"sum({field})", "Min": f"min({field})", "User": field}.get(
            derivation or "", field
        )

    def rows(self, conn: Any, choice: Choice) -> list[dict[str, Any]]:
        """The worksheet's marks: one dict per mark, by qualified field instance, in the order
        of its sort (if any)."""
        fields = self.fields_on_shelves()
        sort = self.view.find("computed-sort")
        if sort is not None:
            fields.append(sort.get("using", ""))
        dimensions = [
            f
            for f in fields
            if self.instance(f).get("derivation") == "None" and f.startswith(f"[{self.primary}]")
        ]
        measures = [f for f in fields if f not in dimensions]
        own = [m for m in measures if m.startswith(f"[{self.primary}]")]
        conditions, parameters = self.filters(choice)
        marks = self.query(conn, self.primary, dimensions, own, conditions, parameters)
        for secondary in sorted({QUALIFIED.fullmatch(m)[1] for m in measures} - {self.primary}):
            self.blend(conn, marks, dimensions, secondary, measures, parameters)
        for measure in measures:
            if self.instance(measure).get("name", "").startswith("[pcto:"):
                total = sum(mark[measure] for mark in marks)
                for mark in marks:
                    mark[measure] /= total
        if sort is not None:
            by = sort.get("using", "")
            marks.sort(key=lambda m: m[by], reverse=sort.get("direction") == "DESC")
        return marks

    def filters(self, choice: Choice) -> tuple[list[str], dict[str, Any]]:
        conditions, parameters = [], dict(choice.parameters)
        picks = {"[none:exhibition:nk]": choice.exhibitions, "[none:floor_name:nk]": choice.floors}
        for number, kept in enumerate(self.view.findall("filter")):
            column = kept.get("column", "")
            source, name = QUALIFIED.fullmatch(column).groups()
            if name in PSEUDO:
                continue
            field = self.field_sql(source, self.instance(column).get("column", ""))
            group = kept.find("groupfilter")
            assert group is not None
            if group.get("function") == "member":
                conditions.append(f"{field} = {group.get('member')}")
            elif picks.get(name):
                conditions.append(f"{field} = ANY(%(pick_{number})s)")
                parameters[f"pick_{number}"] = list(picks[name])
        return conditions, parameters

    def query(
        self,
        conn: Any,
        source: str,
        dimensions: list[str],
        measures: list[str],
        conditions: list[str],
        parameters: dict[str, Any],
    ) -> list[dict[str, Any]]:
        relation = self.sources[source].find("connection/relation")
        assert relation is not None
        selected = [self.field_sql(source, self.instance(d).get("column", "")) for d in dimensions]
        selected += [self.measure_sql(m) for m in measures]
        statement = (
            f'SELECT {", ".join(selected)} FROM "{relation.get("name")}"'
            f" WHERE {' AND '.join(conditions) or 'TRUE'}"
            + (
                f" GROUP BY {', '.join(map(str, range(1, len(dimensions) + 1)))}"
                if dimensions
                else ""
            )
            + (
                f" ORDER BY {', '.join(map(str, range(1, len(dimensions) + 1)))}"
                if dimensions
                else ""
            )
        )
        with conn, conn.cursor() as cur:
            cur.execute(statement, parameters)
            names = [*dimensions, *measures]
            return [dict(zip(names, map(_number, row), strict=True)) for row in cur]

    def blend(
        self,
        conn: Any,
        marks: list[dict[str, Any]],
        dimensions: list[str],
        secondary: str,
        measures: list[str],
        parameters: dict[str, Any],
    ) -> None:
        """Measures of a secondary data source, per value of the linking fields the sheet shows
        (the data-source relationship's column mapping); none where it has no rows."""
        mapped = {
            m.get("value", ""): m.get("key", "")
            for related in self.root.iter("datasource-relationship")
            if related.get("source") == self.primary and related.get("target") == secondary
            for m in related.iter("map")
        }
        links = []
        for dimension in dimensions:
            field = f"[{self.primary}].{self.instance(dimension).get('column')}"
            if field in mapped:
                links.append((dimension, QUALIFIED.fullmatch(mapped[field])[2]))
        assert links, f"{secondary} is not linked to {self.primary}"
        own = [m for m in measures if m.startswith(f"[{secondary}]")]
        relation = self.sources[secondary].find("connection/relation")
        assert relation is not None
        keys = [self.field_sql(secondary, link) for _, link in links]
        with conn, conn.cursor() as cur:
            cur.execute(
                f"SELECT {', '.join(keys + [self.measure_sql(m) for m in own])}"
                f' FROM "{relation.get("name")}"'
                f" GROUP BY {', '.join(map(str, range(1, len(keys) + 1)))}",
                parameters,
            )
            found = {tuple(row[: len(keys)]): [_number(v) for v in row[len(keys) :]] for row in cur}
        for mark in marks:
            values = found.get(tuple(mark[d] for d, _ in links), [None] * len(own))
            mark.update(zip(own, values, strict=True))


def _number(value: Any) -> Any:
    """PostgreSQL's sums and quotients of integers are numeric; Tableau's are numbers."""
    return float(value) if isinstance(value, Decimal) else value


# ---- The web page's JSON ----------------------------------------------------------------------


@pytest.fixture
def web(dashboard_db: DatabaseSettings) -> Iterator[Dashboard]:
    """The web dashboard (python -m dashboard) over 30 days of history and the fixed dataset."""
    fill(dashboard_db, 2_000, 30)
    store(dashboard_db, RATINGS, REQUESTS)
    with dashboard_process(dashboard_db) as dashboard:
        yield dashboard


def chart(web: Dashboard, name: str, query: list[tuple[str, str]]) -> list[dict[str, Any]]:
    path = f"/api/charts/{name}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(web.request(path), timeout=10) as response:  # noqa: S310
        rows: list[dict[str, Any]] = json.load(response)["rows"]
    return rows


def label(row: dict[str, Any]) -> str:
    return f"{row['public_id']} {row['exhibition_name']}"


def request_label(row: dict[str, Any]) -> str:
    return ("⚠ " if row["request_value"] == 1 else "") + str(row["request_description"])


def floor_label(name: str) -> str:
    return name if name == "Vault" else f"Floor {name}"


RH, RQ, EO = (
    "[federated.rating_hourly]",
    "[federated.request_quarter_hourly]",
    "[federated.exhibition_overview]",
)
REQUESTS_SUM = f"{RQ}.[sum:interactions:qk]"


def compare(sheet: str, marks: list[dict[str, Any]], web: list[dict[str, Any]]) -> int:
    """Assert that the worksheet's marks are the web chart's rows; return how many values were
    compared. Tableau draws no mark for an empty category, where the web draws a zero."""
    if sheet == "Average rating over time":
        mine = {
            (m[f"{RH}.[none:period:qk]"].isoformat(), m[f"{RH}.[none:exhibition:nk]"]): (
                m[f"{RH}.[usr:average_rating:qk]"],
                m[f"{RH}.[sum:interactions:qk]"],
            )
            for m in marks
        }
        theirs = {(r["period"], label(r)): (r["average_rating"], r["ratings"]) for r in web}
    elif sheet == "Exhibit popularity":
        mine = {
            m[f"{EO}.[none:exhibition:nk]"]: (
                m[f"{RH}.[usr:selected_ratings:qk]"] or 0,
                m[f"{RQ}.[usr:selected_requests:qk]"] or 0,
            )
            for m in marks
        }
        theirs = {label(r): (r["ratings"], r["requests"]) for r in web}
    elif sheet == "Top-rated exhibitions":
        mine = {
            (m[f"{RH}.[none:exhibition:nk]"], m[f"{RH}.[none:floor_name:nk]"]): (
                m[f"{RH}.[sum:interactions:qk]"],
                m[f"{RH}.[usr:average_rating:qk]"],
                [m[f"{RH}.[usr:rating_{value}:qk]"] for value in range(5)],
            )
            for m in marks
        }
        theirs = {
            (label(r), r["floor_name"]): (r["ratings"], r["average_rating"], r["distribution"])
            for r in web
        }
        # Ranked alike: the same averages in the same order.
        assert [m[f"{RH}.[usr:average_rating:qk]"] for m in marks] == pytest.approx(
            [r["average_rating"] for r in web]
        )
    elif sheet == "Assistance vs emergency":
        mine = {
            m[f"{RQ}.[none:request_label:nk]"]: (
                m[REQUESTS_SUM],
                m[f"{RQ}.[pcto:sum:interactions:qk]"],
            )
            for m in marks
        }
        theirs = {request_label(r): (r["requests"], r["share"]) for r in web if r["requests"]}
    elif sheet == "Requests over the day":
        mine = {
            (m[f"{RQ}.[none:slot:qk]"], m[f"{RQ}.[none:request_label:nk]"]): m[REQUESTS_SUM]
            for m in marks
        }
        theirs = {
            (int(r["slot"][:2]) + int(r["slot"][3:]) / 60, request_label(r)): r["requests"]
            for r in web
            if r["requests"]
        }
    elif sheet == "Requests by floor":
        mine = {
            (m[f"{RQ}.[none:floor_label:nk]"], m[f"{RQ}.[none:request_label:nk]"]): m[REQUESTS_SUM]
            for m in marks
        }
        theirs = {
            (floor_label(r["floor_name"]), request_label(r)): r["requests"]
            for r in web
            if r["requests"]
        }
        # Bottom floor first, as on the web page.
        shown = list(dict.fromkeys(m[f"{RQ}.[none:floor_label:nk]"] for m in marks))
        web_order = [floor_label(r["floor_name"]) for r in web]
        assert shown == [f for f in dict.fromkeys(web_order) if f in shown]
    elif sheet == "Requests per exhibition":
        mine = {
            (m[f"{RQ}.[none:exhibition:nk]"], m[f"{RQ}.[none:request_label:nk]"]): m[REQUESTS_SUM]
            for m in marks
        }
        theirs = {(label(r), request_label(r)): r["requests"] for r in web if r["requests"]}
    else:
        assert sheet == "Where and when"
        mine = {
            (m[f"{RQ}.[none:place:nk]"], m[f"{RQ}.[none:hour_of_day:ok]"]): m[REQUESTS_SUM]
            for m in marks
        }
        theirs = {
            (floor_label(r["place"]) if not r["place"].startswith("EXH_") else r["place"],
             r["hour_of_day"]): r["requests"]
            for r in web
            if r["requests"]
        }  # fmt: skip
    assert mine.keys() == theirs.keys(), sheet
    for key, value in mine.items():
        assert _plain(value) == pytest.approx(_plain(theirs[key])), (sheet, key)
    return sum(len(_plain(v)) if isinstance(_plain(v), list) else 1 for v in mine.values())


def _plain(value: Any) -> Any:
    """Nested tuples and lists as one flat list of numbers (pytest.approx compares those)."""
    if isinstance(value, tuple | list):
        flat: list[Any] = []
        for item in value:
            inner = _plain(item)
            flat += inner if isinstance(inner, list) else [inner]
        return flat
    return float(value)


CHARTS = {
    "Average rating over time": "rating-over-time",
    "Exhibit popularity": "popularity",
    "Top-rated exhibitions": "top-rated",
    "Assistance vs emergency": "request-share",
    "Requests over the day": "requests-by-time-of-day",
    "Requests by floor": "requests-by-floor",
    "Requests per exhibition": "requests-by-exhibition",
    "Where and when": "request-heatmap",
}


def scenarios(today: date) -> dict[str, tuple[list[tuple[str, str]], Choice]]:
    """The same filters, as the web page's query and as a Tableau user's picks."""

    def parameters(
        start: date, hours: tuple[int, int], request: str, quarter: bool, by: str
    ) -> Any:
        return {
            "from_date": start,
            "to_date": today,
            "from_hour": hours[0],
            "to_hour": hours[1],
            "request_type": request,
            "time_step": "Quarter hour" if quarter else "Hour",
            "heatmap_rows": by,
        }

    last_30 = today - timedelta(days=29)
    return {
        "last 30 days, nothing filtered (by day)": (
            [("from", last_30.isoformat()), ("to", today.isoformat())],
            Choice(parameters(last_30, (0, 23), "Both", False, "Floor")),
        ),
        "since March, 3 exhibitions, emergencies, 09-14 h, quarter hours (by week)": (
            [
                ("from", "2026-03-01"),
                ("to", today.isoformat()),
                ("exhibition", "EXH_01"),
                ("exhibition", "EXH_03"),
                ("exhibition", "EXH_04"),
                ("request", "emergency"),
                ("hour_from", "9"),
                ("hour_to", "14"),
                ("granularity", "quarter"),
                ("heatmap", "exhibition"),
            ],
            Choice(
                parameters(date(2026, 3, 1), (9, 14), "Emergency", True, "Exhibition"),
                exhibitions=(
                    "EXH_01 Adaptation",
                    "EXH_03 Cetacean Sensations",
                    "EXH_04 Our Polluted World",
                ),
            ),
        ),
        "since 2025, the Vault and floor 1, assistance (by month)": (
            [
                ("from", "2025-01-01"),
                ("to", today.isoformat()),
                ("floor", "Vault"),
                ("floor", "1"),
                ("request", "assistance"),
            ],
            Choice(
                parameters(date(2025, 1, 1), (0, 23), "Assistance", False, "Floor"),
                floors=("1", "Vault"),
            ),
        ),
    }


def test_every_chart_shows_the_numbers_of_the_web_page(
    web: Dashboard, reader: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    root = workbook()
    on_dashboards = [
        zone.get("name", "")
        for zone in root.iter("zone")
        if zone.get("name") and not zone.get("type-v2")
    ]
    assert sorted(on_dashboards) == sorted(CHARTS), "every chart of both dashboards is compared"
    assert len(DASHBOARDS) == 2
    conn = connect(reader)
    lines = []
    try:
        today = datetime.now(LONDON).date()
        for scenario, (query, choice) in scenarios(today).items():
            for sheet, name in CHARTS.items():
                marks = Worksheet(root, sheet).rows(conn, choice)
                rows = chart(web, name, query)
                assert marks, f"{sheet}: no marks under {scenario!r}; pick filters that show data"
                values = compare(sheet, marks, rows)
                lines.append(
                    f"{scenario}: {sheet} = {name}: {len(marks)} marks, {values} values equal"
                )
    finally:
        conn.close()
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_a_worksheet_unlike_its_web_chart_is_caught(
    web: Dashboard, reader: DatabaseSettings
) -> None:
    """The comparison can fail: a share that ignores the request-type parameter differs."""
    root = workbook()
    selected = root.find(
        "./datasources/datasource[@name='federated.request_quarter_hourly']"
        "/column[@name='[selected]']/calculation"
    )
    assert selected is not None
    selected.set("formula", selected.get("formula", "").split(" AND ([Parameters]")[0])
    query, choice = scenarios(datetime.now(LONDON).date())[
        "since March, 3 exhibitions, emergencies, 09-14 h, quarter hours (by week)"
    ]
    conn = connect(reader)
    try:
        marks = Worksheet(root, "Assistance vs emergency").rows(conn, choice)
    finally:
        conn.close()
    with pytest.raises(AssertionError, match="Assistance vs emergency"):
        compare("Assistance vs emergency", marks, chart(web, "request-share", query))

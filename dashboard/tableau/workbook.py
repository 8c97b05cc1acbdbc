"""The Tableau workbook: the two web dashboards (Exhibitions, Safety), chart for chart, as a
.twb over the reporting views.

Its data sources are the checked-in .tds files (the same connection and columns, so the views
stay the one contract), plus calculated fields that restate the web pages' filters and labels;
a second variant reads the .hyper extract instead. The filters that cross data sources (dates,
hours, request type, and the charts' own switches) are parameters, because a parameter reaches
every sheet whatever its data source; exhibition and floor are quick filters shared through
filter groups and the data-source relationships. Generation needs no database and writes the
same bytes every run, so that a test can hold the committed files to it.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from dashboard.tableau.checks import PARAMETERS, formula_references

USER_NS = "http://www.tableausoftware.com/xml/user"
ET.register_namespace("user", USER_NS)
# The schema version the workbook is written for (tests/data/tableau/twb_2026.1.0.xsd).
VERSION = "26.1"
TDS_DIR = Path(__file__).resolve().parents[1] / "tds"
WORKBOOK_DIR = Path(__file__).resolve().parent
LIVE_FILE = "lmnh.twb"
EXTRACT_FILE = "lmnh-extract.twb"
# Okabe-Ito, as the web pages use it: exhibitions take the colours in this order; vermillion is
# kept for emergencies, which are also marked with a warning sign in their label.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#000000", "#999999", "#F0E442")
PALETTE = "Okabe-Ito"
EMERGENCY = "#D55E00"
ASSISTANCE = "#0072B2"
RATINGS_COLOUR, REQUESTS_COLOUR = "#0072B2", "#E69F00"
EMERGENCY_LABEL = "⚠ Emergency"
# The web pages show the last 30 days when opened; the parameters start there too.
DEFAULT_DAYS = 30


def source_name(view: str) -> str:
    return f"federated.{view}"


# ---- What the workbook holds ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Calc:
    """A calculated field; `formula` is Tableau's language."""

    name: str
    caption: str
    datatype: str
    role: str
    kind: str  # nominal, ordinal or quantitative
    formula: str


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    caption: str
    datatype: str
    value: str  # a Tableau literal
    members: tuple[str, ...] = ()  # a list parameter's literals
    bounds: tuple[int, int] | None = None  # a range parameter's
    default_field: str | None = None  # the calculation whose value it takes when opened


@dataclass(frozen=True, slots=True)
class Pill:
    """A field as a shelf holds it: `derivation` None (a dimension), Sum, Min or User (an
    aggregate calculation); `table_calc` PctTotal for a share of the whole."""

    view: str
    field: str
    derivation: str = "None"
    kind: str = "nominal"
    table_calc: str | None = None

    @property
    def instance(self) -> str:
        prefix = {"None": "none", "Sum": "sum", "Min": "min", "User": "usr"}[self.derivation]
        suffix = {"nominal": "nk", "ordinal": "ok", "quantitative": "qk"}[self.kind]
        inner = f"{prefix}:{self.field}:{suffix}"
        return f"[pcto:{inner}]" if self.table_calc == "PctTotal" else f"[{inner}]"

    @property
    def qualified(self) -> str:
        return f"[{source_name(self.view)}].{self.instance}"


@dataclass(frozen=True, slots=True)
class Sheet:
    """A worksheet: one chart of a web page."""

    name: str
    view: str  # the primary data source
    mark: str
    rows: tuple[Pill, ...] = ()
    cols: tuple[Pill, ...] = ()
    encodings: tuple[tuple[str, Pill], ...] = ()
    measures: tuple[Pill, ...] = ()  # Measure Names / Measure Values, in this order
    measures_on: str = "cols"  # the shelf of Measure Names (rows or cols) or "color"
    sort: tuple[Pill, Pill, str] | None = None  # dimension, by, ASC or DESC
    fixed_axis: tuple[Pill, float, float] | None = None
    selected: bool = True  # filtered by the view's [selected] (dates, hours, request type)
    title: str = ""


@dataclass(frozen=True, slots=True)
class Zone:
    """A dashboard zone; x, y, w, h in Tableau's units (100,000 across and down)."""

    x: int
    y: int
    w: int
    h: int
    kind: str  # worksheet, filter, paramctrl, color, text
    name: str = ""  # the worksheet of a worksheet, filter or legend zone
    param: str = ""  # the field of a filter, parameter control or legend
    text: str = ""
    mode: str = ""


@dataclass(frozen=True, slots=True)
class Dashboard:
    name: str
    zones: tuple[Zone, ...]


@dataclass(frozen=True, slots=True)
class Source:
    view: str
    caption: str
    calcs: tuple[Calc, ...]
    colours: dict[str, dict[str, str]] = field(default_factory=dict)  # field -> bucket -> hex
    palettes: dict[str, str] = field(default_factory=dict)  # field -> palette name


# ---- The calculations: the web pages' filters and labels ----------------------------------------

RH, RQ, EO = "rating_hourly", "request_quarter_hourly", "exhibition_overview"

_IN_RANGE = (
    "[london_date] >= [Parameters].[from_date] AND [london_date] <= [Parameters].[to_date]"
    " AND [hour_of_day] >= [Parameters].[from_hour] AND [hour_of_day] <= [Parameters].[to_hour]"
)
_EXHIBITION = Calc(
    "exhibition", "Exhibition", "string", "dimension", "nominal",
    '[public_id] + " " + [exhibition_name]',
)  # fmt: skip
_RATING_NAMES = ("Terrible", "Bad", "Neutral", "Good", "Amazing")  # the rating table's


def _calc(name: str, caption: str, datatype: str, formula: str, role: str = "dimension") -> Calc:
    kind = {"real": "quantitative", "date": "ordinal"}.get(datatype, "nominal")
    if role == "measure":
        kind = "quantitative"
    return Calc(name, caption, datatype, role, kind, formula)


_DAYS = "DATEDIFF('day', [Parameters].[from_date], [Parameters].[to_date])"
RATING_CALCS = (
    _calc("selected", "In the filters", "boolean", _IN_RANGE),
    _EXHIBITION,
    _calc(
        "rating_points", "Rating points", "integer", "[rating_value] * [interactions]", "measure"
    ),
    _calc(
        "average_rating", "Average rating", "real",
        "SUM([rating_points]) / SUM([interactions])", "measure",
    ),
    # The web page's step: by day up to 62 days, by week (from Monday) up to 400, else by month.
    _calc(
        "period", "Period", "date",
        f"IF {_DAYS} < 62 THEN DATETRUNC('day', [london_date])"
        f" ELSEIF {_DAYS} < 400 THEN DATETRUNC('week', [london_date], 'monday')"
        " ELSE DATETRUNC('month', [london_date]) END",
    ),
    *(
        _calc(
            f"rating_{value}", f"{value} {name}", "integer",
            f"SUM(IF [rating_value] = {value} THEN [interactions] ELSE 0 END)", "measure",
        )
        for value, name in enumerate(_RATING_NAMES)
    ),
    _calc(
        "selected_ratings", "Ratings", "integer",
        "SUM(IF [selected] THEN [interactions] ELSE 0 END)", "measure",
    ),
    _calc("default_from", "30 days ago", "date", f"DATEADD('day', -{DEFAULT_DAYS - 1}, TODAY())"),
    _calc("default_to", "Today", "date", "TODAY()"),
)  # fmt: skip
REQUEST_CALCS = (
    _calc(
        "selected", "In the filters", "boolean",
        f"{_IN_RANGE} AND ([Parameters].[request_type] = \"Both\""
        " OR [request_description] = [Parameters].[request_type])",
    ),
    _EXHIBITION,
    _calc(
        "request_label", "Request type", "string",
        'IF [request_value] = 1 THEN "⚠ " + [request_description] ELSE [request_description] END',
    ),
    _calc(
        "floor_label", "Floor", "string",
        'IF [floor_name] = "Vault" THEN "Vault" ELSE "Floor " + [floor_name] END',
    ),
    # Floors bottom to top: the Vault first, then by number.
    _calc(
        "floor_order", "Floor order", "integer",
        'IF [floor_name] = "Vault" THEN 0 ELSE INT([floor_name]) END', "measure",
    ),
    _calc(
        "place", "Where", "string",
        'IF [Parameters].[heatmap_rows] = "Exhibition" THEN [exhibition] ELSE [floor_label] END',
    ),
    _calc(
        "slot", "Time of day", "real",
        '[hour_of_day] + IF [Parameters].[time_step] = "Quarter hour"'
        " THEN DATEPART('minute', [quarter_hour_start]) / 60 ELSE 0 END",
    ),
    _calc(
        "selected_requests", "Requests", "integer",
        "SUM(IF [selected] THEN [interactions] ELSE 0 END)", "measure",
    ),
)  # fmt: skip

SOURCES = (
    Source(
        RH, "LMNH ratings (rating_hourly)", RATING_CALCS, palettes={"[none:exhibition:nk]": PALETTE}
    ),
    Source(
        RQ,
        "LMNH requests (request_quarter_hourly)",
        REQUEST_CALCS,
        colours={"[none:request_label:nk]": {"Assistance": ASSISTANCE, EMERGENCY_LABEL: EMERGENCY}},
    ),
    Source(
        EO,
        "LMNH exhibitions (exhibition_overview)",
        (_EXHIBITION,),
        colours={
            "[:Measure Names]": {
                Pill(RH, "selected_ratings", "User", "quantitative").qualified: RATINGS_COLOUR,
                Pill(RQ, "selected_requests", "User", "quantitative").qualified: REQUESTS_COLOUR,
            }
        },
    ),
)
SOURCE_OF = {source.view: source for source in SOURCES}
# Fields that link the data sources: a quick filter on one reaches the others (and blends).
LINKS = ("exhibition", "floor_name")

PARAMETER_LIST = (
    Parameter(
        "from_date", "From (London date)", "date", "#2026-01-01#",
        default_field=f"[{source_name(RH)}].[default_from]",
    ),
    Parameter(
        "to_date", "To (inclusive)", "date", "#2026-01-30#",
        default_field=f"[{source_name(RH)}].[default_to]",
    ),
    Parameter("from_hour", "From hour", "integer", "0", bounds=(0, 23)),
    Parameter("to_hour", "To hour (inclusive: 12 is 12:59)", "integer", "23", bounds=(0, 23)),
    Parameter(
        "request_type", "Request type", "string", '"Both"',
        members=('"Both"', '"Assistance"', '"Emergency"'),
    ),
    Parameter(
        "time_step", "Requests per", "string", '"Hour"', members=('"Hour"', '"Quarter hour"')
    ),
    Parameter(
        "heatmap_rows", "Heatmap rows", "string", '"Floor"',
        members=('"Floor"', '"Exhibition"'),
    ),
)  # fmt: skip


def _q(field_name: str) -> Pill:
    return Pill(RQ, field_name)


_REQUESTS = Pill(RQ, "interactions", "Sum", "quantitative")
_REQUEST_LABEL = _q("request_label")
SHEETS = (
    Sheet(
        "Average rating over time",
        RH,
        "Line",
        rows=(Pill(RH, "average_rating", "User", "quantitative"),),
        cols=(Pill(RH, "period", kind="quantitative"),),
        encodings=(
            ("color", Pill(RH, "exhibition")),
            ("tooltip", Pill(RH, "interactions", "Sum", "quantitative")),
        ),
        fixed_axis=(Pill(RH, "average_rating", "User", "quantitative"), 0.0, 4.0),
        title="Average rating over time: mean of 0 (Terrible) to 4 (Amazing), per exhibition",
    ),
    Sheet(
        "Exhibit popularity",
        EO,
        "Bar",
        rows=(Pill(EO, "exhibition"),),
        measures=(
            Pill(RH, "selected_ratings", "User", "quantitative"),
            Pill(RQ, "selected_requests", "User", "quantitative"),
        ),
        measures_on="color",
        selected=False,  # the blended measures carry the filters themselves
        title="Exhibit popularity: interactions per exhibition, ratings and requests",
    ),
    Sheet(
        "Top-rated exhibitions",
        RH,
        "Text",
        rows=(Pill(RH, "exhibition"), Pill(RH, "floor_name")),
        measures=(
            Pill(RH, "interactions", "Sum", "quantitative"),
            Pill(RH, "average_rating", "User", "quantitative"),
            *(Pill(RH, f"rating_{value}", "User", "quantitative") for value in range(5)),
        ),
        sort=(
            Pill(RH, "exhibition"),
            Pill(RH, "average_rating", "User", "quantitative"),
            "DESC",
        ),
        title="Top-rated exhibitions: ranked by average rating, with the 0-4 distribution",
    ),
    Sheet(
        "Assistance vs emergency",
        RQ,
        "Pie",
        encodings=(
            ("color", _REQUEST_LABEL),
            ("wedge-size", _REQUESTS),
            ("text", _REQUEST_LABEL),
            ("text", _REQUESTS),
            ("text", Pill(RQ, "interactions", "Sum", "quantitative", "PctTotal")),
        ),
        title="Assistance vs emergency: share of requests, emergencies marked ⚠",
    ),
    Sheet(
        "Requests over the day",
        RQ,
        "Line",
        rows=(_REQUESTS,),
        cols=(Pill(RQ, "slot", kind="quantitative"),),
        encodings=(("color", _REQUEST_LABEL), ("shape", _REQUEST_LABEL)),
        title="Requests over the day: per hour or quarter hour of the museum's day (London)",
    ),
    Sheet(
        "Requests by floor",
        RQ,
        "Bar",
        rows=(_q("floor_label"), _REQUEST_LABEL),
        cols=(_REQUESTS,),
        encodings=(("color", _REQUEST_LABEL), ("text", _REQUESTS)),
        sort=(_q("floor_label"), Pill(RQ, "floor_order", "Min", "quantitative"), "ASC"),
        title="Requests by floor: where visitors ask for help, bottom floor first",
    ),
    Sheet(
        "Requests per exhibition",
        RQ,
        "Bar",
        rows=(_q("exhibition"), _REQUEST_LABEL),
        cols=(_REQUESTS,),
        encodings=(("color", _REQUEST_LABEL), ("text", _REQUESTS)),
        title="Requests per exhibition: assistance and emergency requests at each exhibition",
    ),
    Sheet(
        "Where and when",
        RQ,
        "Square",
        rows=(_q("place"),),
        cols=(Pill(RQ, "hour_of_day", kind="ordinal"),),
        encodings=(("color", _REQUESTS), ("text", _REQUESTS)),
        title="Where and when: requests by floor or exhibition and hour of the day (London)",
    ),
)

_BAR = 8_000  # the filter bar's height, in Tableau's units


def _filter_bar(sheet: str, view: str) -> tuple[Zone, ...]:
    """The web pages' filter bar: dates, exhibition, floor, request type, time of day."""
    dates = f"[{PARAMETERS}]"
    controls = [
        Zone(0, 7_000, 12_000, _BAR, "paramctrl", param=f"{dates}.[from_date]", mode="datetime"),
        Zone(12_000, 7_000, 12_000, _BAR, "paramctrl", param=f"{dates}.[to_date]", mode="datetime"),
        Zone(
            24_000, 7_000, 18_000, _BAR, "filter", sheet,
            f"[{source_name(view)}].[none:exhibition:nk]", mode="checkdropdown",
        ),
        Zone(
            42_000, 7_000, 12_000, _BAR, "filter", sheet,
            f"[{source_name(view)}].[none:floor_name:nk]", mode="checkdropdown",
        ),
        Zone(
            54_000, 7_000, 16_000, _BAR, "paramctrl", param=f"{dates}.[request_type]",
            mode="compact",
        ),
        Zone(70_000, 7_000, 15_000, _BAR, "paramctrl", param=f"{dates}.[from_hour]", mode="slider"),
        Zone(85_000, 7_000, 15_000, _BAR, "paramctrl", param=f"{dates}.[to_hour]", mode="slider"),
    ]  # fmt: skip
    return tuple(controls)


DASHBOARDS = (
    Dashboard(
        "Exhibitions",
        (
            Zone(
                0, 0, 100_000, 7_000, "text",
                text="Exhibitions: visitor ratings and engagement, for Angela Millay,"
                " Exhibitions Manager. Times are the museum's clock (Europe/London).",
            ),
            *_filter_bar("Average rating over time", RH),
            Zone(0, 15_000, 86_000, 40_000, "worksheet", "Average rating over time"),
            Zone(
                86_000, 15_000, 14_000, 40_000, "color", "Average rating over time",
                f"[{source_name(RH)}].[none:exhibition:nk]",
            ),
            Zone(0, 55_000, 45_000, 45_000, "worksheet", "Exhibit popularity"),
            Zone(45_000, 55_000, 55_000, 45_000, "worksheet", "Top-rated exhibitions"),
        ),
    ),
    Dashboard(
        "Safety",
        (
            Zone(
                0, 0, 100_000, 7_000, "text",
                text="Safety: assistance and emergency requests, for Rita Pelkman, Head of"
                " Security & Visitor Safety. Times are the museum's clock (Europe/London).",
            ),
            *_filter_bar("Requests over the day", RQ),
            Zone(0, 15_000, 30_000, 35_000, "worksheet", "Assistance vs emergency"),
            Zone(30_000, 15_000, 56_000, 35_000, "worksheet", "Requests over the day"),
            Zone(
                86_000, 15_000, 14_000, 10_000, "paramctrl",
                param=f"[{PARAMETERS}].[time_step]", mode="compact",
            ),
            Zone(
                86_000, 25_000, 14_000, 25_000, "color", "Requests over the day",
                f"[{source_name(RQ)}].[none:request_label:nk]",
            ),
            Zone(0, 50_000, 50_000, 25_000, "worksheet", "Requests by floor"),
            Zone(50_000, 50_000, 50_000, 25_000, "worksheet", "Requests per exhibition"),
            Zone(0, 75_000, 86_000, 25_000, "worksheet", "Where and when"),
            Zone(
                86_000, 75_000, 14_000, 25_000, "paramctrl",
                param=f"[{PARAMETERS}].[heatmap_rows]", mode="compact",
            ),
        ),
    ),
)  # fmt: skip


# ---- The XML ----------------------------------------------------------------------------------


def _el(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    """A child element; attribute names use `_` for Tableau's `-`, `user_` for user:."""
    element = ET.SubElement(parent, tag, {_attr(key): value for key, value in attrs.items()})
    if text is not None:
        element.text = text
    return element


def _attr(key: str) -> str:
    if key.startswith("user_"):
        return f"{{{USER_NS}}}{key[5:].replace('_', '-')}"
    return key.replace("_", "-")


def _uuid(*parts: str) -> str:
    """A stable id, so that the file is the same on every run."""
    return "{" + str(uuid.uuid5(uuid.NAMESPACE_URL, "lmnh:" + ":".join(parts))).upper() + "}"


def read_tds(view: str, tds_dir: Path = TDS_DIR) -> ET.Element:
    """The .tds of a view, as `python -m dashboard.tableau tds` writes it."""
    return ET.parse(tds_dir / f"{view}.tds").getroot()  # noqa: S314 - our own checked-in file


def hyper_connection(view: str, hyper_path: str) -> ET.Element:
    """The connection of the extract variant: the table of `python -m dashboard.tableau hyper`."""
    connection = ET.Element("connection", {"class": "federated"})
    named = _el(_el(connection, "named-connections"), "named-connection")
    named.set("caption", Path(hyper_path).name)
    named.set("name", "hyper.lmnh")
    _el(
        named,
        "connection",
        authentication="auth-none",
        **{"class": "hyper"},
        dbname=hyper_path,
        schema="Extract",
        tablename=view,
        username="tableau_internal_user",
    )
    _el(
        connection,
        "relation",
        connection="hyper.lmnh",
        name=view,
        table=f"[Extract].[{view}]",
        type="table",
    )
    return connection


def _parameters_source(parent: ET.Element) -> None:
    source = _el(parent, "datasource", hasconnection="false", inline="true", name=PARAMETERS)
    source.set("version", VERSION)
    _el(source, "aliases", enabled="yes")
    for parameter in PARAMETER_LIST:
        _parameter_column(source, parameter)


def _parameter_column(parent: ET.Element, parameter: Parameter) -> None:
    kind = "quantitative" if parameter.datatype in ("date", "integer") else "nominal"
    attrs = {
        "caption": parameter.caption,
        "datatype": parameter.datatype,
        "name": f"[{parameter.name}]",
        "param-domain-type": "list" if parameter.members else "range",
        "role": "measure",
        "type": kind,
        "value": parameter.value,
    }
    if parameter.default_field:
        attrs["default-value-field"] = parameter.default_field
    column = ET.SubElement(parent, "column", attrs)
    _el(column, "calculation", **{"class": "tableau"}, formula=parameter.value)
    if parameter.members:
        members = _el(column, "members")
        for member in parameter.members:
            _el(members, "member", value=member)
    elif parameter.bounds:
        low, high = parameter.bounds
        _el(column, "range", granularity="1", max=str(high), min=str(low))


def _worksheet_window(parent: ET.Element, name: str) -> None:
    """A worksheet's tab, hidden behind the dashboards, with Tableau's usual cards."""
    window = _el(parent, "window", **{"class": "worksheet"}, hidden="true", name=name)
    cards = _el(window, "cards")
    left = _el(_el(cards, "edge", name="left"), "strip", size="160")
    for card in ("pages", "filters", "marks"):
        _el(left, "card", type=card)
    top = _el(cards, "edge", name="top")
    for size, card in (("2147483647", "columns"), ("2147483647", "rows"), ("31", "title")):
        _el(_el(top, "strip", size=size), "card", type=card)
    _el(window, "simple-id", uuid=_uuid("window", name))


def _data_source(parent: ET.Element, source: Source, connection: ET.Element) -> None:
    tds = read_tds(source.view)
    element = _el(parent, "datasource", caption=source.caption, inline="true")
    element.set("name", source_name(source.view))
    element.set("version", VERSION)
    element.append(connection)
    _el(element, "aliases", enabled="yes")
    for column in tds.findall("column"):
        element.append(column)
    for calc in source.calcs:
        _calc_column(element, calc)
    _el(
        element,
        "layout",
        dim_ordering="alphabetic",
        measure_ordering="alphabetic",
        show_structure="true",
    )
    if source.colours or source.palettes:
        rule = _el(_el(element, "style"), "style-rule", element="mark")
        for name, palette in source.palettes.items():
            _el(rule, "encoding", attr="color", field=name, palette=palette, type="palette")
        for name, buckets in source.colours.items():
            encoding = _el(rule, "encoding", attr="color", field=name, type="palette")
            for bucket, colour in buckets.items():
                _el(_el(encoding, "map", to=colour), "bucket", f'"{bucket}"')


def _calc_column(parent: ET.Element, calc: Calc) -> None:
    column = _el(parent, "column", caption=calc.caption, datatype=calc.datatype)
    column.set("name", f"[{calc.name}]")
    column.set("role", calc.role)
    column.set("type", calc.kind)
    _el(column, "calculation", **{"class": "tableau"}, formula=calc.formula)


def _columns_of(view: str) -> dict[str, ET.Element]:
    """Every field of a data source by name: the view's columns and the calculations."""
    found = {column.get("name", ""): column for column in read_tds(view).findall("column")}
    for calc in SOURCE_OF[view].calcs:
        holder = ET.Element("holder")
        _calc_column(holder, calc)
        found[f"[{calc.name}]"] = holder[0]
    return found


def _needed(view: str, names: Iterator[str]) -> list[str]:
    """The fields `names` need in `view`, with those their calculations name, in a stable
    order (a worksheet lists every field it depends on)."""
    columns = _columns_of(view)
    seen: list[str] = []
    pending = list(names)
    while pending:
        name = pending.pop(0)
        if name in seen:
            continue
        seen.append(name)
        calculation = columns[name].find("calculation")
        if calculation is not None:
            pending += [
                field
                for source, field in formula_references(calculation.get("formula", ""))
                if source is None
            ]
    return sorted(seen)


def _pills(sheet: Sheet) -> list[Pill]:
    pills = [*sheet.rows, *sheet.cols, *(pill for _, pill in sheet.encodings), *sheet.measures]
    if sheet.sort:
        pills += [sheet.sort[0], sheet.sort[1]]
    pills += [Pill(sheet.view, link) for link in LINKS]
    # A blended data source links on the exhibition, so it lists that field too.
    pills += [Pill(view, "exhibition") for view in {p.view for p in sheet.measures} - {sheet.view}]
    if sheet.selected:
        pills.append(Pill(sheet.view, "selected"))
    return pills


def _parameters_used(views: Sequence[str], fields: dict[str, list[str]]) -> list[str]:
    used = set()
    for view in views:
        columns = _columns_of(view)
        for name in fields[view]:
            calculation = columns[name].find("calculation")
            if calculation is not None:
                used |= {
                    field[1:-1]
                    for source, field in formula_references(calculation.get("formula", ""))
                    if source == PARAMETERS
                }
    return [parameter.name for parameter in PARAMETER_LIST if parameter.name in used]


def _worksheet(parent: ET.Element, sheet: Sheet) -> None:
    worksheet = _el(parent, "worksheet", name=sheet.name)
    title = _el(_el(_el(worksheet, "layout-options"), "title"), "formatted-text")
    _el(title, "run", sheet.title)
    table = _el(worksheet, "table")
    view = _el(table, "view")
    pills = _pills(sheet)
    views = list(dict.fromkeys(pill.view for pill in pills))
    fields = {v: _needed(v, (f"[{p.field}]" for p in pills if p.view == v)) for v in views}
    parameters = _parameters_used(views, fields)
    sources = _el(view, "datasources")
    for v in views:
        _el(sources, "datasource", caption=SOURCE_OF[v].caption, name=source_name(v))
    if parameters:
        _el(sources, "datasource", name=PARAMETERS)
        dependencies = _el(view, "datasource-dependencies", datasource=PARAMETERS)
        for parameter in PARAMETER_LIST:
            if parameter.name in parameters:
                _parameter_column(dependencies, parameter)
    for v in views:
        dependencies = _el(view, "datasource-dependencies", datasource=source_name(v))
        columns = _columns_of(v)
        for name in fields[v]:
            dependencies.append(columns[name])
        instances = sorted({p.instance: p for p in pills if p.view == v}.items())
        for _, pill in instances:
            instance = _el(dependencies, "column-instance", column=f"[{pill.field}]")
            instance.set("derivation", pill.derivation)
            instance.set("name", pill.instance)
            instance.set("pivot", "key")
            instance.set("type", pill.kind)
            if pill.table_calc:
                _el(instance, "table-calc", ordering_type="Rows", type=pill.table_calc)
    filtered = [Pill(sheet.view, link) for link in LINKS]
    for group, pill in enumerate(filtered, start=1):
        shared = _el(view, "filter", **{"class": "categorical"}, column=pill.qualified)
        shared.set("filter-group", str(group))
        _el(
            shared,
            "groupfilter",
            function="level-members",
            level=pill.instance,
            user_ui_enumeration="all",
            user_ui_marker="enumerate",
        )
    if sheet.selected:
        selected = Pill(sheet.view, "selected")
        only = _el(view, "filter", **{"class": "categorical"}, column=selected.qualified)
        _el(
            only,
            "groupfilter",
            function="member",
            level=selected.instance,
            member="true",
            user_ui_domain="database",
            user_ui_enumeration="inclusive",
            user_ui_marker="enumerate",
        )
        filtered.append(selected)
    if sheet.measures:
        names = _el(
            view,
            "filter",
            **{"class": "categorical"},
            column=f"[{source_name(sheet.view)}].[:Measure Names]",
        )
        union = _el(names, "groupfilter", function="union", user_op="manual")
        for pill in sheet.measures:
            _el(
                union,
                "groupfilter",
                function="member",
                level="[:Measure Names]",
                member=f'"{pill.qualified}"',
            )
    if sheet.sort:
        dimension, by, direction = sheet.sort
        _el(
            view,
            "computed-sort",
            column=dimension.qualified,
            direction=direction,
            using=by.qualified,
        )
    slices = _el(view, "slices")
    for pill in filtered:
        _el(slices, "column", pill.qualified)
    _el(view, "aggregation", value="true")
    style = _el(table, "style")
    if sheet.fixed_axis:
        pill, low, high = sheet.fixed_axis
        rule = _el(style, "style-rule", element="axis")
        _el(
            rule,
            "encoding",
            attr="space",
            **{"class": "0"},
            field=pill.qualified,
            field_type="quantitative",
            max=str(high),
            min=str(low),
            range_type="fixed",
            scope="rows",
            type="space",
        )
    if sheet.mark == "Square":
        rule = _el(style, "style-rule", element="mark")
        _el(
            rule,
            "encoding",
            attr="color",
            field=_REQUESTS.qualified,
            palette="blue_10_0",
            type="interpolated",
        )
    pane = _el(
        _el(table, "panes"), "pane", selection_relaxation_option="selection-relaxation-allow"
    )
    _el(_el(pane, "view"), "breakdown", value="auto")
    _el(pane, "mark", **{"class": sheet.mark})
    encodings = _el(pane, "encodings")
    measure_names = f"[{source_name(sheet.view)}].[:Measure Names]"
    for channel, pill in sheet.encodings:
        _el(encodings, channel, column=pill.qualified)
    if sheet.measures and sheet.measures_on == "color":
        _el(encodings, "color", column=measure_names)
    elif sheet.measures:
        _el(encodings, "text", column=f"[{source_name(sheet.view)}].[Multiple Values]")
    rows = [pill.qualified for pill in sheet.rows]
    cols = [pill.qualified for pill in sheet.cols]
    if sheet.measures and sheet.measures_on == "color":
        cols.append(f"[{source_name(sheet.view)}].[Multiple Values]")
    elif sheet.measures:
        cols.append(measure_names)
    _el(table, "rows", _shelf(rows))
    _el(table, "cols", _shelf(cols))
    _el(worksheet, "simple-id", uuid=_uuid("worksheet", sheet.name))


def _shelf(fields: Sequence[str]) -> str:
    """A shelf nests its fields left to right: `(a / b)`."""
    if len(fields) <= 1:
        return "".join(fields)
    return "(" + " / ".join(fields) + ")"


def _dashboard(parent: ET.Element, dashboard: Dashboard) -> None:
    element = _el(parent, "dashboard", name=dashboard.name)
    _el(element, "style")
    _el(
        element,
        "size",
        maxheight="1080",
        maxwidth="1920",
        minheight="1080",
        minwidth="1920",
        sizing_mode="fixed",
    )
    zones = _el(element, "zones")
    outer = _el(zones, "zone", h="100000", id="1", type_v2="layout-basic", w="100000")
    outer.set("x", "0")
    outer.set("y", "0")
    for number, zone in enumerate(dashboard.zones, start=2):
        attrs = {"h": str(zone.h), "id": str(number)}
        if zone.name:
            attrs["name"] = zone.name
        if zone.param:
            attrs["param"] = zone.param
        if zone.kind != "worksheet":
            attrs["type-v2"] = zone.kind
        if zone.mode:
            attrs["mode"] = zone.mode
        attrs |= {"w": str(zone.w), "x": str(zone.x), "y": str(zone.y)}
        child = ET.SubElement(outer, "zone", attrs)
        if zone.kind == "text":
            _el(_el(child, "formatted-text"), "run", zone.text)
    _el(element, "simple-id", uuid=_uuid("dashboard", dashboard.name))


def workbook(connections: dict[str, ET.Element], caption_suffix: str = "") -> ET.Element:
    """The workbook, its data sources connected through `connections` (one per view)."""
    root = ET.Element(
        "workbook",
        {
            "original-version": VERSION,
            "source-build": "0.0.0 (0000.0.0.0)",
            "source-platform": "linux",
            "version": VERSION,
        },
    )
    _el(_el(root, "document-format-change-manifest"), "ManifestByVersion")
    preferences = _el(root, "preferences")
    palette = _el(preferences, "color-palette", name=PALETTE, type="regular")
    for colour in OKABE_ITO:
        _el(palette, "color", colour)
    sources = _el(root, "datasources")
    _parameters_source(sources)
    for source in SOURCES:
        captioned = replace(source, caption=source.caption + caption_suffix)
        _data_source(sources, captioned, connections[source.view])
    relationships = _el(root, "datasource-relationships")
    for source in SOURCES:
        for target in SOURCES:
            if target.view == source.view:
                continue
            related = _el(
                relationships,
                "datasource-relationship",
                source=source_name(source.view),
                target=source_name(target.view),
            )
            mapping = _el(related, "column-mapping")
            for link in LINKS:
                _el(
                    mapping,
                    "map",
                    key=f"[{source_name(target.view)}].[{link}]",
                    value=f"[{source_name(source.view)}].[{link}]",
                )
    worksheets = _el(root, "worksheets")
    for sheet in SHEETS:
        _worksheet(worksheets, sheet)
    dashboards = _el(root, "dashboards")
    for dashboard in DASHBOARDS:
        _dashboard(dashboards, dashboard)
    windows = _el(root, "windows")
    for sheet in SHEETS:
        _worksheet_window(windows, sheet.name)
    for number, dashboard in enumerate(DASHBOARDS):
        window = _el(windows, "window", **{"class": "dashboard"}, name=dashboard.name)
        if number == 0:
            window.set("maximized", "true")
        viewpoints = _el(window, "viewpoints")
        for zone in dashboard.zones:
            if zone.kind == "worksheet":
                _el(_el(viewpoints, "viewpoint", name=zone.name), "zoom", type="entire-view")
        _el(window, "active", id="-1")
        _el(window, "simple-id", uuid=_uuid("window", dashboard.name))
    explain = _el(root, "explain-data", enabled_for_viewer="false")
    explain.set("extreme-values-enabled-for-all", "false")
    _el(explain, "explanation-types")
    return root


def document(root: ET.Element) -> str:
    """The file's text: indented, attributes in a fixed order, the same bytes every run."""
    ET.indent(root, "  ")
    text = ET.tostring(root, encoding="unicode")
    return f"<?xml version='1.0' encoding='utf-8' ?>\n{text}\n"


def live_workbook(tds_dir: Path = TDS_DIR) -> ET.Element:
    """Live on PostgreSQL through the connections of the .tds files in `tds_dir` (say, written
    for another database or a reader's login); the columns are the contract's, from TDS_DIR."""
    connections = {}
    for source in SOURCES:
        connection = read_tds(source.view, tds_dir).find("connection")
        assert connection is not None, f"{source.view}.tds has no connection"  # noqa: S101
        connections[source.view] = connection
    return workbook(connections)


def extract_workbook(hyper_path: str = "lmnh.hyper") -> ET.Element:
    """On the extract that `python -m dashboard.tableau hyper --out <hyper_path>` writes."""
    connections = {source.view: hyper_connection(source.view, hyper_path) for source in SOURCES}
    return workbook(connections, " (extract)")


def generated_files(hyper_path: str = "lmnh.hyper", tds_dir: Path = TDS_DIR) -> dict[str, str]:
    """Every file `python -m dashboard.tableau twb` writes, by name: the two workbooks and a
    layout sketch of each dashboard."""
    live = live_workbook(tds_dir)
    files = {LIVE_FILE: document(live), EXTRACT_FILE: document(extract_workbook(hyper_path))}
    for dashboard in DASHBOARDS:
        files[f"{dashboard.name.lower()}-layout.svg"] = layout_svg(live, dashboard.name)
    return files


def layout_svg(root: ET.Element, dashboard: str, width: int = 960) -> str:
    """A sketch of a dashboard's zones, drawn from the workbook's XML (not by Tableau): what
    each zone holds and where, to the scale of its 1920 x 1080 size."""
    height = width * 9 // 16
    found = root.find(f"./dashboards/dashboard[@name='{dashboard}']")
    assert found is not None, f"no dashboard {dashboard!r}"  # noqa: S101
    captions = _captions(root)
    fills = {"worksheet": "#E8F1F8", "filter": "#F2F2F2", "paramctrl": "#F2F2F2"}
    lines = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="#FFFFFF" stroke="#1A1A1A"/>',
    ]
    for zone in found.iter("zone"):
        kind = zone.get("type-v2", "worksheet")
        if kind == "layout-basic":
            continue
        x, y = int(zone.get("x", 0)) * width // 100_000, int(zone.get("y", 0)) * height // 100_000
        w, h = int(zone.get("w", 0)) * width // 100_000, int(zone.get("h", 0)) * height // 100_000
        param = captions.get(zone.get("param", ""), "")
        if kind == "worksheet":
            title, detail = zone.get("name", ""), _holds(root, zone.get("name", ""), captions)
        elif kind == "text":
            title, detail = zone.findtext("formatted-text/run") or "", ""
        else:
            what = {"filter": "Filter", "paramctrl": "Parameter", "color": "Colour legend"}
            title, detail = f"{what[kind]}: {param}", ""
        lines.append(
            f'<rect x="{x + 2}" y="{y + 2}" width="{w - 4}" height="{h - 4}"'
            f' fill="{fills.get(kind, "#FFFFFF")}" stroke="#0072B2"/>'
        )
        wrapped = [(part, "bold") for part in _wrap(title, max(8, w // 7))]
        wrapped += [(part, "normal") for part in _wrap(detail, max(8, w // 7))]
        for number, (part, weight) in enumerate(wrapped):
            lines.append(
                f'<text x="{x + 8}" y="{y + 18 + 15 * number}" font-weight="{weight}">'
                f"{_escape(part)}</text>"
            )
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def _captions(root: ET.Element) -> dict[str, str]:
    """Caption of each qualified field and field instance (`[source].[sum:interactions:qk]`)."""
    captions = {}
    for source in root.findall("./datasources/datasource"):
        for column in source.findall("column"):
            name = column.get("name", "")[1:-1]
            caption = column.get("caption", name)
            for prefix in ("", "none:", "sum:", "min:", "usr:", "pcto:sum:"):
                for suffix in ("", ":nk", ":ok", ":qk"):
                    if bool(prefix) == bool(suffix):
                        shown = {"sum:": "Sum of ", "min:": "Min of ", "pcto:sum:": "% of "}
                        label = f"{shown.get(prefix, '')}{caption}"
                        captions[f"[{source.get('name')}].[{prefix}{name}{suffix}]"] = label
    return captions


def _holds(root: ET.Element, sheet: str, captions: dict[str, str]) -> str:
    """What a worksheet draws: its mark, its shelves and its encodings, by caption."""
    found = root.find(f"./worksheets/worksheet[@name='{sheet}']/table")
    assert found is not None, f"no worksheet {sheet!r}"  # noqa: S101

    def named(text: str) -> str:
        fields = re.findall(r"\[[^\]]+\]\.\[[^\]]+\]", text)
        return " / ".join(captions.get(f, f.rsplit(".", 1)[-1].strip("[]:")) for f in fields)

    mark = found.find("panes/pane/mark")
    parts = [f"{mark.get('class') if mark is not None else 'Automatic'} marks"]
    parts.extend(
        f"{shelf}: {named(found.findtext(shelf) or '')}"
        for shelf in ("rows", "cols")
        if found.findtext(shelf)
    )
    parts.extend(
        f"{encoding.tag}: {named(encoding.get('column', ''))}"
        for encoding in found.findall("panes/pane/encodings/*")
    )
    measures = [
        named(group.get("member", "").strip('"'))
        for group in found.iter("groupfilter")
        if group.get("level") == "[:Measure Names]"
    ]
    if measures:
        parts.append(f"measures: {', '.join(measures)}")
    return "; ".join(parts)


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

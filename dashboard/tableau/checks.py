"""What Tableau's schema cannot check in a workbook: that its parts name each other correctly.

The XSD skips formulas and every reference between named parts, so a workbook can validate and
still open with a red exclamation mark on every sheet. These checks read the XML only (no
Tableau, no database) and return one line per problem.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

PARAMETERS = "Parameters"
# Tableau's own pseudo-fields of a data source, present without being declared.
PSEUDO_FIELDS = ("[:Measure Names]", "[Multiple Values]")
_QUALIFIED = re.compile(r"\[([^\]]+)\]\.(\[[^\]]+\])")
_REFERENCE = re.compile(r"\[([^\]]+)\](?:\.\[([^\]]+)\])?")
_INSTANCE = re.compile(r"\[(?:[a-z]+:)?(?:[a-z]+:)([^:\]]+):[a-z]+\]")


def formula_references(formula: str) -> list[tuple[str | None, str]]:
    """(data source or None for the calculation's own, field) for each field a formula names."""
    return [
        (outer, f"[{inner}]") if inner else (None, f"[{outer}]")
        for outer, inner in _REFERENCE.findall(formula)
    ]


def base_field(instance: str) -> str:
    """`[sum:interactions:qk]` -> `[interactions]`; pseudo-fields and plain names unchanged."""
    found = _INSTANCE.fullmatch(instance)
    return f"[{found.group(1)}]" if found else instance


def check_workbook(root: ET.Element) -> list[str]:
    """Every reference between the workbook's parts, checked: what names a missing part."""
    sources = {ds.get("name", ""): ds for ds in root.findall("./datasources/datasource")}
    fields = {
        name: {column.get("name", ""): column for column in ds.findall("column")}
        for name, ds in sources.items()
    }
    problems = _check_sources(sources, fields)
    worksheets = {ws.get("name", ""): ws for ws in root.findall("./worksheets/worksheet")}
    used: dict[str, set[str]] = {}
    for name, worksheet in worksheets.items():
        used[name] = _check_worksheet(name, worksheet, fields, problems)
    dashboards = {db.get("name", ""): db for db in root.findall("./dashboards/dashboard")}
    for name, dashboard in dashboards.items():
        for zone in dashboard.iter("zone"):
            _check_zone(name, zone, worksheets, used, fields, problems)
    for window in root.findall("./windows/window"):
        kind, name = window.get("class"), window.get("name", "")
        if name not in (worksheets if kind == "worksheet" else dashboards):
            problems.append(f"window {name!r} shows a {kind} that does not exist")
    for related in root.findall("./datasource-relationships/datasource-relationship"):
        for mapping in related.iter("map"):
            for ref in (mapping.get("key", ""), mapping.get("value", "")):
                problems += _missing(f"relationship {ref}", ref, fields)
    return list(dict.fromkeys(problems))  # a formula may name the same missing field twice


def _check_sources(
    sources: dict[str, ET.Element], fields: dict[str, dict[str, ET.Element]]
) -> list[str]:
    problems = []
    for name, ds in sources.items():
        for column in ds.findall("column"):
            where = f"data source {name!r}, field {column.get('name')}"
            calculation = column.find("calculation")
            formula = calculation.get("formula", "") if calculation is not None else ""
            if name != PARAMETERS:
                for outer, field in formula_references(formula):
                    problems += _missing(where, f"[{outer or name}].{field}", fields)
            default = column.get("default-value-field")
            if default:
                problems += _missing(where, default, fields)
        for encoding in ds.iter("encoding"):
            field = base_field(encoding.get("field", ""))
            if field not in fields[name] and field not in PSEUDO_FIELDS:
                problems.append(f"data source {name!r} colours {field}, which it does not have")
    return problems


def _check_worksheet(
    name: str,
    worksheet: ET.Element,
    fields: dict[str, dict[str, ET.Element]],
    problems: list[str],
) -> set[str]:
    """Check one worksheet; return the qualified fields it uses."""
    view = worksheet.find("table/view")
    if view is None:
        problems.append(f"worksheet {name!r} has no view")
        return set()
    listed = {ds.get("name", "") for ds in view.findall("datasources/datasource")}
    declared: set[str] = set()
    for dependencies in view.findall("datasource-dependencies"):
        source = dependencies.get("datasource", "")
        if source not in fields or source not in listed:
            problems.append(f"worksheet {name!r} depends on an unlisted data source {source!r}")
            continue
        own = set()
        for column in dependencies.findall("column"):
            field = column.get("name", "")
            known = fields[source].get(field)
            if known is None:
                problems.append(
                    f"worksheet {name!r} uses {field}, which data source {source!r} does not have"
                )
            elif known.get("datatype") != column.get("datatype"):
                problems.append(
                    f"worksheet {name!r} takes {field} as {column.get('datatype')}, data source"
                    f" {source!r} has it as {known.get('datatype')}"
                )
            own.add(field)
        for instance in dependencies.findall("column-instance"):
            if instance.get("column") not in own:
                problems.append(
                    f"worksheet {name!r}: {instance.get('name')} is of {instance.get('column')},"
                    " which the worksheet does not list"
                )
            declared.add(f"[{source}].{instance.get('name')}")
        declared |= {f"[{source}].{pseudo}" for pseudo in PSEUDO_FIELDS}
    used = set()
    table = worksheet.find("table")
    assert table is not None  # noqa: S101 - found its view above
    for shelf in ("rows", "cols"):
        used |= {f"[{ds}].{field}" for ds, field in _QUALIFIED.findall(table.findtext(shelf) or "")}
    for element in table.iter():
        for attribute in ("column", "using", "field"):
            value = element.get(attribute, "")
            if _QUALIFIED.fullmatch(value):
                used.add(value)
        if element.tag == "groupfilter" and element.get("level") == "[:Measure Names]":
            used.add(element.get("member", "").strip('"'))
        if element.tag == "column" and element.text and _QUALIFIED.fullmatch(element.text):
            used.add(element.text)
    problems.extend(
        f"worksheet {name!r} uses {field}, which it does not declare"
        for field in sorted(used - declared)
    )
    return used


def _check_zone(
    dashboard: str,
    zone: ET.Element,
    worksheets: dict[str, ET.Element],
    used: dict[str, set[str]],
    fields: dict[str, dict[str, ET.Element]],
    problems: list[str],
) -> None:
    sheet, param = zone.get("name"), zone.get("param")
    where = f"dashboard {dashboard!r}, zone {zone.get('id')}"
    if sheet is not None and sheet not in worksheets:
        problems.append(f"{where} shows worksheet {sheet!r}, which does not exist")
        return
    if not param:
        return
    if param.startswith(f"[{PARAMETERS}]."):
        problems += _missing(where, param, fields)
    elif sheet is None or param not in used[sheet]:
        problems.append(f"{where} controls {param}, which worksheet {sheet!r} does not use")


def _missing(where: str, qualified: str, fields: dict[str, dict[str, ET.Element]]) -> list[str]:
    found = _QUALIFIED.fullmatch(qualified)
    if found is None:
        return [f"{where}: {qualified!r} is not a [data source].[field] name"]
    source, field = found.groups()
    if source not in fields:
        return [f"{where} names data source {source!r}, which the workbook does not have"]
    if field not in fields[source]:
        return [f"{where} names {field}, which data source {source!r} does not have"]
    return []

"""The Tableau workbook without Tableau or a database: the committed files are what the generator
makes, they pass Tableau's published schema (twb_2026.1.0.xsd), their parts name each other, and
Tableau's own Document API reads the two dashboards, their sheets, data sources and fields."""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path

import pytest
from lxml import etree

from dashboard.tableau import TDS_DIR, VIEWS
from dashboard.tableau.checks import check_workbook
from dashboard.tableau.workbook import (
    DASHBOARDS,
    EXTRACT_FILE,
    LIVE_FILE,
    SHEETS,
    WORKBOOK_DIR,
    generated_files,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "tests" / "data" / "tableau"
XS = "{http://www.w3.org/2001/XMLSchema}"
# The schema imports these namespaces without a location; the stubs beside it stand in.
STUBS = {
    "http://www.tableausoftware.com/xml/user": "user.xsd",
    "http://www.w3.org/XML/1998/namespace": "xml.xsd",
}
WORKBOOKS = (LIVE_FILE, EXTRACT_FILE)


@cache
def schema() -> etree.XMLSchema:
    document = etree.parse(str(SCHEMA_DIR / "twb_2026.1.0.xsd"))
    for imported in document.getroot().iter(f"{XS}import"):
        location = SCHEMA_DIR / STUBS[imported.get("namespace")]
        imported.set("schemaLocation", location.as_uri())
    return etree.XMLSchema(document)


def schema_errors(text: str) -> list[str]:
    """Where the document breaks Tableau's schema, one line each (none: it is valid)."""
    document = etree.fromstring(text.encode("utf-8"))
    if schema().validate(document):
        return []
    return [f"line {error.line}: {error.message}" for error in schema().error_log]


def committed(name: str) -> str:
    return (WORKBOOK_DIR / name).read_text(encoding="utf-8")


def parsed(name: str) -> ET.Element:
    return ET.fromstring(committed(name))  # noqa: S314 - our own checked-in file


def test_the_committed_files_are_what_the_generator_writes(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dashboard.tableau", "twb", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    files = generated_files()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(files)
    for name, text in files.items():
        assert (tmp_path / name).read_text(encoding="utf-8") == text, f"{name} changes per run"
        assert committed(name) == text, f"{name} is out of date: python -m dashboard.tableau twb"


@pytest.mark.parametrize("name", WORKBOOKS)
def test_the_workbook_passes_tableaus_schema(name: str) -> None:
    assert schema_errors(committed(name)) == []


@pytest.mark.parametrize("view", VIEWS)
def test_each_data_source_passes_tableaus_schema_in_a_minimal_workbook(view: str) -> None:
    """The schema covers workbooks only: a .tds is checked as a workbook's one data source."""
    tds = (TDS_DIR / f"{view}.tds").read_text(encoding="utf-8")
    datasource = tds.split("?>", 1)[1].split("-->", 1)[1]
    wrapped = (
        "<workbook original-version='26.1' source-build='0.0.0 (0000.0.0.0)' version='26.1'"
        " xmlns:user='http://www.tableausoftware.com/xml/user'>"
        "<document-format-change-manifest><ManifestByVersion /></document-format-change-manifest>"
        f"<preferences /><datasources>{datasource}</datasources>"
        "<explain-data enabled-for-viewer='false' extreme-values-enabled-for-all='false'>"
        "<explanation-types /></explain-data></workbook>"
    )
    assert schema_errors(wrapped) == []


@pytest.mark.parametrize("name", WORKBOOKS)
def test_every_part_the_workbook_names_exists(name: str) -> None:
    assert check_workbook(parsed(name)) == []


def test_a_wrong_element_fails_the_schema() -> None:
    broken = committed(LIVE_FILE).replace("<rows>", "<row>", 1).replace("</rows>", "</row>", 1)
    errors = schema_errors(broken)
    assert any("Element 'row': This element is not expected" in error for error in errors), errors


def test_a_zone_naming_a_missing_worksheet_fails() -> None:
    root = parsed(LIVE_FILE)
    zone = root.find("./dashboards/dashboard[@name='Safety']//zone[@name='Requests by floor']")
    assert zone is not None
    zone.set("name", "Requests by flor")
    assert (
        "dashboard 'Safety', zone 14 shows worksheet 'Requests by flor', which does not exist"
        in (check_workbook(root))
    )
    # The schema cannot see it: the broken workbook is still valid XML for Tableau's XSD.
    assert schema_errors(ET.tostring(root, encoding="unicode")) == []


def test_a_field_missing_from_its_data_source_fails() -> None:
    """A data source without [floor_name]: every sheet and calculation using it is named."""
    root = parsed(LIVE_FILE)
    source = root.find("./datasources/datasource[@name='federated.request_quarter_hourly']")
    assert source is not None
    floor = source.find("column[@name='[floor_name]']")
    assert floor is not None
    source.remove(floor)
    problems = check_workbook(root)
    assert (
        "worksheet 'Requests by floor' uses [floor_name], which data source"
        " 'federated.request_quarter_hourly' does not have"
    ) in problems
    assert (
        "data source 'federated.request_quarter_hourly', field [floor_label] names [floor_name],"
        " which data source 'federated.request_quarter_hourly' does not have"
    ) in problems


def test_a_calculation_naming_a_missing_parameter_fails() -> None:
    root = parsed(LIVE_FILE)
    parameters = root.find("./datasources/datasource[@name='Parameters']")
    assert parameters is not None
    hour = parameters.find("column[@name='[to_hour]']")
    assert hour is not None
    parameters.remove(hour)
    problems = check_workbook(root)
    assert any(
        "names [to_hour], which data source 'Parameters' does not have" in p for p in problems
    )
    assert (
        "dashboard 'Exhibitions', zone 9 names [to_hour], which data source 'Parameters'"
        " does not have"
    ) in problems


@pytest.mark.parametrize("name", WORKBOOKS)
def test_tableaus_document_api_reads_both_dashboards(name: str) -> None:
    with warnings.catch_warnings():
        # tableaudocumentapi 0.11 still compares versions with distutils' LooseVersion.
        warnings.simplefilter("ignore", DeprecationWarning)
        from tableaudocumentapi import Workbook

        workbook = Workbook(str(WORKBOOK_DIR / name))
    assert workbook.dashboards == [dashboard.name for dashboard in DASHBOARDS]
    assert workbook.worksheets == [sheet.name for sheet in SHEETS]
    sources = {source.name: source for source in workbook.datasources}
    assert list(sources) == [
        "Parameters",
        "federated.rating_hourly",
        "federated.request_quarter_hourly",
        "federated.exhibition_overview",
    ]
    connection = sources["federated.rating_hourly"].connections[0]
    if name == LIVE_FILE:
        assert (connection.dbclass, connection.dbname, connection.server) == (
            "postgres",
            "lmnh",
            "127.0.0.1",
        )
    else:
        assert (connection.dbclass, connection.dbname) == ("hyper", "lmnh.hyper")
    ratings = sources["federated.rating_hourly"].fields
    assert ratings["[average_rating]"].calculation == "SUM([rating_points]) / SUM([interactions])"
    assert sorted(ratings["[interactions]"].worksheets) == [
        "Average rating over time",
        "Exhibit popularity",
        "Top-rated exhibitions",
    ]
    requests = sources["federated.request_quarter_hourly"].fields
    assert sorted(requests["[request_label]"].worksheets) == [
        "Assistance vs emergency",
        "Requests by floor",
        "Requests over the day",
        "Requests per exhibition",
    ]
    # Every sheet's data sources, as the Document API reads their use.
    used = {
        sheet: sorted(source for source, ds in sources.items() if ds.fields.used_by_sheet(sheet))
        for sheet in workbook.worksheets
    }
    assert used["Exhibit popularity"] == [
        "Parameters",
        "federated.exhibition_overview",
        "federated.rating_hourly",
        "federated.request_quarter_hourly",
    ]
    assert used["Where and when"] == ["Parameters", "federated.request_quarter_hourly"]


def test_the_checks_see_a_copy_with_no_dashboards_as_incomplete() -> None:
    """A window left for a dashboard that is gone is named too."""
    root = copy.deepcopy(parsed(LIVE_FILE))
    dashboards = root.find("dashboards")
    assert dashboards is not None
    root.remove(dashboards)
    assert check_workbook(root) == [
        "window 'Exhibitions' shows a dashboard that does not exist",
        "window 'Safety' shows a dashboard that does not exist",
    ]

"""Tableau outputs against real PostgreSQL: the checked-in .tds files name only columns that
exist, and a .hyper extract reads back with the same aggregates as the views."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dashboard.tableau import TDS_DIR, VIEWS, export_hyper, tds_document, verify_hyper, view_columns
from lmnh.config import DatabaseSettings, load_config
from lmnh.database import connect
from tests.integration.dashboard_support import RATINGS, REQUESTS, dashboard_db, store
from tests.integration.support import PYTHON, ROOT, clean_env

pytestmark = pytest.mark.integration
__all__ = ["dashboard_db"]


def test_tds_files_are_well_formed_and_name_only_existing_columns(
    dashboard_db: DatabaseSettings,
) -> None:
    conn = connect(dashboard_db)
    try:
        columns = view_columns(conn)
    finally:
        conn.close()
    files = sorted(TDS_DIR.glob("*.tds"))
    assert [path.stem for path in files] == sorted(VIEWS)
    for path in files:
        root = ET.parse(path).getroot()  # noqa: S314 - our own checked-in file
        assert root.tag == "datasource"
        connection = root.find("./connection/named-connections/named-connection/connection")
        assert connection is not None and connection.get("class") == "postgres"
        relation = root.find("./connection/relation")
        assert relation is not None
        assert relation.get("table") == f"[public].[{path.stem}]"
        named = [column.get("name") for column in root.findall("./column")]
        existing = [f"[{column.name}]" for column in columns[path.stem]]
        assert named == existing, (
            f"{path.name} names columns the view does not have, or misses some"
        )
        # The file is what the generator makes for the local stack (its settings, not those of
        # an external server the tests may be using): regenerate when views change.
        expected = tds_document(path.stem, columns[path.stem], load_config({}).database)
        assert path.read_text(encoding="utf-8") == expected, (
            f"{path.name} is out of date: run `python -m dashboard.tableau tds`"
        )


def test_hyper_extract_matches_postgresql(dashboard_db: DatabaseSettings, tmp_path: Path) -> None:
    pytest.importorskip("tableauhyperapi", reason="the optional tableau extra")
    from tableauhyperapi import Connection, HyperProcess, Telemetry

    store(dashboard_db, RATINGS, REQUESTS)
    out = tmp_path / "lmnh.hyper"
    conn = connect(dashboard_db)
    try:
        rows = export_hyper(conn, out)
        assert rows == {
            "exhibition_overview": 6,
            "rating_detail": 8,
            "request_detail": 7,
            "rating_hourly": 8,
            "request_quarter_hourly": 7,
        }
        assert verify_hyper(conn, out) == []
        with (
            HyperProcess(
                telemetry=Telemetry.DO_NOT_SEND_USAGE_DATA_TO_TABLEAU,
                parameters={"log_config": ""},
            ) as hyper,
            Connection(endpoint=hyper.endpoint, database=out) as extract,
        ):
            # Times keep their instant and London reading: 09:30 UTC on 30 March is 10:30 BST.
            found = extract.execute_list_query(
                'SELECT "london_time"::text, "hour_of_day", "rating_value"'
                ' FROM "Extract"."rating_detail" WHERE "event_at" = \'2026-03-30 09:30:00+00\''
            )
            assert found == [["2026-03-30 10:30:00", 10, 2]]
            # A damaged extract is caught.
            extract.execute_command(
                'DELETE FROM "Extract"."rating_hourly" WHERE "rating_value" = 4'
            )
        differences = verify_hyper(conn, out)
        assert any(d.startswith("rating_hourly: count(*) is 6") for d in differences), differences
    finally:
        conn.close()


def test_hyper_command(dashboard_db: DatabaseSettings, tmp_path: Path) -> None:
    pytest.importorskip("tableauhyperapi", reason="the optional tableau extra")
    store(dashboard_db, RATINGS, REQUESTS)
    out = tmp_path / "museum.hyper"
    result = subprocess.run(
        [PYTHON, "-m", "dashboard.tableau", "--env-file", "/dev/null", "hyper", "--out", str(out)],
        cwd=ROOT,
        env={**clean_env(), "DB_NAME": dashboard_db.name},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "read back: matches PostgreSQL" in result.stdout
    assert "rating_detail 8" in result.stdout
    assert out.stat().st_size > 0

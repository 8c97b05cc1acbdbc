"""The schema against real PostgreSQL: constraints, reference data, idempotence, reset; the
migrations against schema.sql and the other files, the version check, the lock_timeout."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from datetime import date

import psycopg2
import pytest

from dashboard import VIEWS_FILE
from dashboard.__main__ import _check_database
from lmnh.config import DatabaseSettings, Settings
from lmnh.database import (
    ROLES_FILE,
    SCHEMA_FILE,
    applied_migrations,
    apply_schema,
    connect,
    missing_tables,
    require_schema,
    reset_schema,
    table_row_counts,
)
from lmnh.errors import ExitCode, FatalError
from lmnh.migrate import apply_migrations
from lmnh.museum import KIOSK_REFERENCE
from lmnh.schema import status
from lmnh.schema_version import APPLY_COMMAND, EXPECTED, LEDGER
from lmnh.store import Store
from tests.integration.conftest import fresh_target
from tests.integration.support import (
    NO_ENV_FILE,
    PYTHON,
    ROOT,
    Target,
    assert_exactly_once,
)

pytestmark = pytest.mark.integration

# The kiosk feed's reference table, as the museum publishes it.
EXHIBITIONS = {
    (
        "EXH_00",
        "Measureless to Man",
        "1",
        "Geology",
        date(2021, 8, 23),
        "An immersive 3D experience: delve deep into a previously-inaccessible cave system.",
    ),
    (
        "EXH_01",
        "Adaptation",
        "Vault",
        "Entomology",
        date(2019, 7, 1),
        "How insect evolution has kept pace with an industrialised world",
    ),
    (
        "EXH_02",
        "The Crenshaw Collection",
        "2",
        "Zoology",
        date(2021, 3, 3),
        "An exhibition of 18th Century watercolours, mostly focused on South American wildlife.",
    ),
    (
        "EXH_03",
        "Cetacean Sensations",
        "1",
        "Zoology",
        date(2019, 7, 1),
        "Whales: from ancient myth to critically endangered.",
    ),
    (
        "EXH_04",
        "Our Polluted World",
        "3",
        "Ecology",
        date(2021, 5, 12),
        "A hard-hitting exploration of humanity's impact on the environment.",
    ),
    (
        "EXH_05",
        "Thunder Lizards",
        "1",
        "Paleontology",
        date(2023, 2, 1),
        "How new research is making scientists rethink what dinosaurs really looked like.",
    ),
}


def test_reference_data_is_exactly_the_kiosk_feed_table(target: Target) -> None:
    rows = target.query(
        "SELECT public_id, exhibition_name, floor_name, department_name, exhibition_start_date,"
        " exhibition_description FROM exhibition JOIN floor USING (floor_id)"
        " JOIN department USING (department_id)"
    )
    assert set(rows) == EXHIBITIONS
    assert set(target.query("SELECT floor_name FROM floor")) == {("Vault",), ("1",), ("2",), ("3",)}
    assert set(target.query("SELECT department_name FROM department")) == {
        ("Entomology",),
        ("Geology",),
        ("Paleontology",),
        ("Zoology",),
        ("Ecology",),
    }
    assert set(target.query("SELECT rating_value, rating_description FROM rating")) == {
        (0, "Terrible"),
        (1, "Bad"),
        (2, "Neutral"),
        (3, "Good"),
        (4, "Amazing"),
    }
    assert set(target.query("SELECT request_value, request_description FROM request")) == {
        (0, "Assistance"),
        (1, "Emergency"),
    }


def test_the_validators_built_in_reference_matches_the_database(target: Target) -> None:
    loaded = Store(target.settings.database).load_reference()
    assert loaded.exhibition_start == KIOSK_REFERENCE.exhibition_start
    assert loaded.rating_values == KIOSK_REFERENCE.rating_values
    assert loaded.request_values == KIOSK_REFERENCE.request_values


BAD_ROWS = [
    ("INSERT INTO rating (rating_value, rating_description) VALUES (5, 'Sublime')", "check"),
    ("INSERT INTO rating (rating_value, rating_description) VALUES (-1, 'Awful')", "check"),
    ("INSERT INTO request (request_value, request_description) VALUES (2, 'Fire')", "check"),
    ("INSERT INTO request (request_value, request_description) VALUES (0, 'Again')", "unique"),
    (
        "INSERT INTO exhibition (exhibition_name, exhibition_description, department_id, floor_id,"
        " exhibition_start_date, public_id) VALUES ('Old', '', 1, 1, '1899-12-31', 'EXH_90')",
        "check",
    ),
    (
        "INSERT INTO exhibition (exhibition_name, exhibition_description, department_id, floor_id,"
        " exhibition_start_date, public_id)"
        " VALUES ('Soon', '', 1, 1, CURRENT_DATE + 1, 'EXH_91')",
        "check",
    ),
    (
        "INSERT INTO exhibition (exhibition_name, exhibition_description, department_id, floor_id,"
        " exhibition_start_date, public_id) VALUES ('Lost', '', 99, 1, '2020-01-01', 'EXH_92')",
        "foreign key",
    ),
    (
        "INSERT INTO exhibition (exhibition_name, exhibition_description, department_id, floor_id,"
        " exhibition_start_date, public_id) VALUES ('Odd', '', 1, 1, '2020-01-01', 'X1')",
        "check",
    ),
    (
        "INSERT INTO rating_interaction (exhibition_id, rating_id, event_at, kafka_topic,"
        " kafka_partition, kafka_offset) VALUES (1, 1, NULL, 't', 0, 0)",
        "null",
    ),
    (
        "INSERT INTO rating_interaction (exhibition_id, rating_id, event_at, kafka_topic,"
        " kafka_partition, kafka_offset) VALUES (99, 1, now(), 't', 0, 0)",
        "foreign key",
    ),
    (
        "INSERT INTO request_interaction (exhibition_id, request_id, event_at, kafka_topic,"
        " kafka_partition, kafka_offset) VALUES (1, 1, now(), 't', 0, -1)",
        "check",
    ),
    (
        "INSERT INTO rating_interaction (exhibition_id, rating_id, event_at, kafka_topic,"
        " kafka_partition, kafka_offset) VALUES (1, 1, now(), 't', 0, 7), (1, 2, now(), 't', 0, 7)",
        "unique",
    ),
    (
        "INSERT INTO rejected_message (raw, reason_code, reason, kafka_topic, kafka_partition,"
        " kafka_offset) VALUES ('x', NULL, 'why', 't', 0, 0)",
        "null",
    ),
]


@pytest.mark.parametrize(("statement", "violation"), BAD_ROWS)
def test_constraints_reject_bad_rows(target: Target, statement: str, violation: str) -> None:
    with pytest.raises(psycopg2.IntegrityError) as raised:
        target.query(statement + " RETURNING 1")
    assert violation in str(raised.value).lower()


def test_applying_the_schema_again_keeps_data_and_reset_deletes_it(target: Target) -> None:
    insert = (
        "INSERT INTO rating_interaction (exhibition_id, rating_id, event_at, kafka_topic,"
        " kafka_partition, kafka_offset) VALUES (1, 1, now(), 't', 0, 0) RETURNING 1"
    )
    target.query(insert)
    conn = connect(target.settings.database)
    apply_schema(conn)
    apply_schema(conn)
    assert target.query("SELECT count(*) FROM rating_interaction") == [(1,)]
    assert target.query("SELECT count(*) FROM exhibition") == [(6,)]
    # A row in every other kind of table too: the daily counts, the rollups kept by the
    # triggers, the staff's accounts and sessions. A reset leaves none behind.
    target.query(
        "INSERT INTO rejected_daily (day, reason_code, messages)"
        " VALUES ('2026-01-01', 'invalid_val', 3) RETURNING 1"
    )
    target.query(
        "INSERT INTO staff_account (username, display_name, roles, password_hash)"
        " VALUES ('guard', 'Guard', '{security}', '$argon2id$v=19$x') RETURNING 1"
    )
    reset_schema(conn)
    assert missing_tables(conn) == []
    for table in ("rating_interaction", "rating_rollup", "rejected_daily", "staff_account"):
        assert target.query(f"SELECT count(*) FROM {table}") == [(0,)], table
    counts = table_row_counts(conn)  # what `stack schema --reset` lists before it drops
    kept = {table: rows for table, rows in counts.items() if rows and table[0] != "_"}
    assert kept == {"exhibition": 6, "floor": 4, "department": 5, "rating": 5, "request": 2}
    assert {"rating_rollup", "rejected_daily", "staff_account", "_yoyo_migration"} <= set(counts)
    conn.close()


def test_the_original_designs_schema_sql_applies_with_psql_to_an_empty_database(
    settings: Settings,
) -> None:
    """`psql -f schema.sql`, as the original design's card says, at the top of the checkout:
    the tables, constraints, indexes and reference data, the same file the pipeline applies."""
    assert (ROOT / "schema.sql").resolve() == SCHEMA_FILE
    for target in fresh_target(settings, schema=False):
        db = target.settings.database
        result = subprocess.run(
            ["psql", "-v", "ON_ERROR_STOP=1", "-q", "-f", "schema.sql"],
            cwd=ROOT,
            env=_psql_env(db),
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        conn = connect(db)
        try:
            assert missing_tables(conn) == []
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM exhibition")
                assert cur.fetchone() == (len(KIOSK_REFERENCE.exhibition_start),)
        finally:
            conn.close()
        the_original_design_loads_then_the_migrations_take_over(target)


def the_original_design_loads_then_the_migrations_take_over(target: Target) -> None:
    """On a database made by `psql -f schema.sql` alone (no ledger): the original design's
    `python kafka_pipeline.py --topic lmnh --limit N` loads; `lmnh-schema apply` then records
    the conversion to partitions (the tables are partitioned already) rather than run it, the
    DEFAULT partitions stay, and the pipeline goes on loading."""
    report = target.history(300, seed=13)
    loaded = target.pipeline("--limit", "200")
    assert "consumed 200" in loaded.stdout, loaded.stdout
    applied = subprocess.run(
        [PYTHON, "-m", "lmnh.schema", "apply", "--env-file", NO_ENV_FILE],
        cwd=ROOT,
        env=target.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert applied.returncode == 0, applied.stderr
    assert "recording migration 0002_partitions" in applied.stderr, applied.stderr
    defaults = target.query(
        "SELECT count(*) FROM pg_class WHERE relispartition AND right(relname, 8) = '_default'"
    )
    assert defaults == [(4,)]
    conn = connect(target.settings.database)
    try:
        assert applied_migrations(conn) == list(EXPECTED)
    finally:
        conn.close()
    target.pipeline()
    assert_exactly_once(target, report)


def _psql_env(db: DatabaseSettings) -> dict[str, str]:
    return {
        **os.environ,
        "PGHOST": db.host,
        "PGPORT": str(db.port),
        "PGDATABASE": db.name,
        "PGUSER": db.username,
        "PGPASSWORD": db.password.reveal(),
    }


def _execute(db: DatabaseSettings, statement: str, params: tuple[object, ...] = ()) -> None:
    conn = connect(db)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, params)
    finally:
        conn.close()


def _dump(db: DatabaseSettings) -> str:
    """The database as pg_dump sees it (schema, grants and the reference data), without the
    migrations' ledger, which only one of the two ways makes."""
    result = subprocess.run(
        ["pg_dump", "--restrict-key=lmnh", "--exclude-table=_yoyo_*", "--exclude-table=yoyo_lock"],
        env=_psql_env(db),
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_the_migrations_make_what_the_files_make(settings: Settings) -> None:
    """On two empty databases, `psql -f` of schema.sql, views.sql and roles.sql (in the order
    a release from before migrations applied them) and the migrations: the same tables,
    constraints, indexes, functions, triggers, views, grants and reference data. A change to
    the schema is a new migration and the same change in the files; this keeps them equal."""
    for by_files in fresh_target(settings, schema=False):
        db = by_files.settings.database
        files = [flag for path in (SCHEMA_FILE, VIEWS_FILE, ROLES_FILE) for flag in ("-f", path)]
        subprocess.run(
            ["psql", "-v", "ON_ERROR_STOP=1", "-q", "--single-transaction", *files],
            env=_psql_env(db),
            capture_output=True,
            check=True,
        )
        made_by_files = _dump(db)
    assert "CREATE TABLE public.rating_rollup" in made_by_files
    assert "COPY public.exhibition" in made_by_files
    for by_migrations in fresh_target(settings):
        conn = connect(by_migrations.settings.database)
        try:
            assert applied_migrations(conn) == list(EXPECTED)
        finally:
            conn.close()
        made_by_migrations = _dump(by_migrations.settings.database)
    assert made_by_migrations.replace(by_migrations.settings.database.name, "DB") == (
        made_by_files.replace(db.name, "DB")
    )


def test_the_schema_version_is_refused_unless_it_is_this_releases(target: Target) -> None:
    """One line that names the command to run, exit 6: a database whose ledger lacks a
    migration (the pipeline, `lmnh-schema status`), and one newer than this code (the
    dashboard's check at start)."""
    db = target.settings.database
    _execute(db, f"DELETE FROM {LEDGER} WHERE migration_id = %s", (EXPECTED[-1],))
    result = target.pipeline("--limit", "1", check=False)
    assert result.returncode == ExitCode.SCHEMA_MISSING, result.stderr[-2000:]
    assert f"this release needs {EXPECTED[-1]}" in result.stderr
    assert f"run `{APPLY_COMMAND}`" in result.stderr
    assert status(db) == ExitCode.SCHEMA_MISSING

    conn = connect(db)
    try:
        assert apply_schema(conn) == [EXPECTED[-1]]
        require_schema(conn)
        assert apply_schema(conn) == []
        assert status(db) == ExitCode.OK
        _execute(db, f"INSERT INTO {LEDGER} VALUES ('x', '9999_later', now())")
        with pytest.raises(FatalError, match="newer than this release") as newer:
            _check_database(db)
        assert newer.value.exit_code == ExitCode.SCHEMA_MISSING
    finally:
        conn.close()


def test_a_migration_queues_no_one_behind_it_and_keeps_the_data(target: Target) -> None:
    """A database made before migrations (no ledger) while a loading transaction holds its
    facts table: the baseline asks for that table's lock for at most lock_timeout, gives up
    and tries again after a backoff, so that the other writers are never queued behind it for
    longer; once the table is free it applies, and the data stays."""
    db = target.settings.database
    # Each its own exhibition: writers of one rollup row wait for each other, as they should.
    store = (
        "INSERT INTO rating_interaction (exhibition_id, rating_id, event_at, kafka_topic,"
        " kafka_partition, kafka_offset) VALUES (%s, 1, now(), 't', 0, %s)"
    )
    _execute(db, store, (1, 0))
    _execute(db, "DROP TABLE _yoyo_migration, _yoyo_log, _yoyo_version, yoyo_lock")
    loading = connect(db)
    migrating = connect(db)
    retried = threading.Event()
    applied: list[str] = []

    def wait(seconds: float) -> None:
        retried.set()
        time.sleep(seconds)

    def migrate() -> None:
        applied.extend(apply_migrations(migrating, lock_timeout_s=0.2, sleep=wait))

    try:
        with loading.cursor() as cur:
            cur.execute(store, (2, 1))  # its transaction stays open, with the table's lock
        migration = threading.Thread(target=migrate)
        migration.start()
        assert retried.wait(30), "the migration never gave up its wait"
        # Another writer of the same table, while the migration retries: it goes through.
        _execute(db, "SET statement_timeout = '5s'; " + store, (3, 2))
        loading.commit()
        migration.join(60)
        assert applied == list(EXPECTED)
    finally:
        loading.close()
        migrating.close()
    assert target.query("SELECT count(*) FROM rating_interaction") == [(3,)]
    assert target.query(f"SELECT migration_id FROM {LEDGER}") == [(m,) for m in EXPECTED]

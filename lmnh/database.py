"""Connections to PostgreSQL and the schema: connect with clear errors, apply, reset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from lmnh.config import DatabaseSettings
from lmnh.errors import ExitCode, FatalError, PermanentError, PipelineError, TransientError

SCHEMA_FILE = Path(__file__).resolve().parent / "schema.sql"
ROLES_FILE = SCHEMA_FILE.parent / "roles.sql"  # grants on all the others, so it comes last
# The tables of schema.sql, children before parents. What other parts add on top of them (the
# dashboard's views and rollups) is dropped with them by a reset, and rebuilt by their own file.
TABLES = (
    "load_minute",
    "kafka_offset",
    "rejected_message",
    "rating_interaction",
    "request_interaction",
    "exhibition",
    "rating",
    "request",
    "floor",
    "department",
)
CONNECT_TIMEOUT_S = 10


def connect(db: DatabaseSettings, *, application_name: str = "lmnh") -> Connection:
    """Open a connection, or say what to fix.

    Authentication and a missing database cannot heal by waiting (`FatalError`); a server that
    is down or unreachable may come back (`TransientError`).
    """
    try:
        return psycopg2.connect(
            host=db.host,
            port=db.port,
            dbname=db.name,
            user=db.username,
            password=db.password.reveal(),
            sslmode=db.sslmode or "prefer",
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name=application_name,
        )
    except psycopg2.OperationalError as error:
        message = str(error).strip().splitlines()[-1] if str(error).strip() else "no answer"
        where = f"{db.username}@{db.host}:{db.port}/{db.name}"
        if "password authentication failed" in message or "no pg_hba.conf entry" in message:
            raise FatalError(
                f"database refused the login {where}: check DB_USERNAME and DB_PASSWORD",
                ExitCode.DATABASE_UNREACHABLE,
            ) from None
        if "does not exist" in message:
            raise FatalError(
                f"database {where} does not exist: create it, or run `python -m stack up`",
                ExitCode.DATABASE_UNREACHABLE,
            ) from None
        hint = "start it with `python -m stack up`" if db.local else "check DB_HOST and DB_PORT"
        raise TransientError(f"database unreachable at {where} ({message}): {hint}") from None


def execute_outside_transaction(db: DatabaseSettings, statement: sql.Composable) -> None:
    """Run one statement on a connection of its own in autocommit mode: CREATE or DROP
    DATABASE, CREATE ROLE and CHECKPOINT cannot run inside a transaction."""
    conn = connect(db)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def ensure_database(server: DatabaseSettings, name: str) -> bool:
    """Create database `name` on the server `server` points at, unless it exists; True if this
    call created it. It connects to the server's `postgres` database, which always exists."""
    conn = connect(replace(server, name="postgres"))
    conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is not None:
                return False
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return True
    finally:
        conn.close()


def create_database(
    server: DatabaseSettings, name: str, *, schema: bool = True, extensions: Sequence[Path] = ()
) -> DatabaseSettings:
    """Database `name` on the server `server` points at, created if missing, with the schema
    and `extensions` applied unless `schema` is False; returns its settings."""
    ensure_database(server, name)
    database = replace(server, name=name)
    if schema:
        conn = connect(database)
        try:
            apply_schema(conn, extensions)
        finally:
            conn.close()
    return database


def drop_database(server: DatabaseSettings, name: str) -> None:
    """Drop database `name` with every connection to it."""
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    execute_outside_transaction(server, drop)


def missing_tables(conn: Connection) -> list[str]:
    """Tables of schema.sql that this database lacks."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NULL",
            (list(TABLES),),
        )
        missing = [row[0] for row in cur.fetchall()]
    conn.rollback()
    return missing


def require_schema(conn: Connection) -> None:
    missing = missing_tables(conn)
    if missing:
        raise FatalError(
            f"schema missing: no table {', '.join(missing)}: run `python -m stack schema`",
            ExitCode.SCHEMA_MISSING,
        )


def apply_schema(conn: Connection, extensions: Sequence[Path] = ()) -> None:
    """Create what is missing and seed the reference data; never drops or deletes. Each of
    `extensions` (say, the dashboard's views.sql) is applied after schema.sql and before
    roles.sql, which grants on what they made too. The pipeline itself needs none of them."""
    with conn, conn.cursor() as cur:
        cur.execute(SCHEMA_FILE.read_text(encoding="utf-8"))
        for extension in extensions:
            cur.execute(extension.read_text(encoding="utf-8"))
        cur.execute(ROLES_FILE.read_text(encoding="utf-8"))


def table_row_counts(conn: Connection) -> dict[str, int]:
    """Rows in each existing table of the schema: what a reset would delete."""
    counts: dict[str, int] = {}
    with conn, conn.cursor() as cur:
        for table in TABLES:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
            if cur.fetchone() == (True,):
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
                row = cur.fetchone()
                counts[table] = row[0] if row else 0
    return counts


def reset_schema(conn: Connection, extensions: Sequence[Path] = ()) -> None:
    """Drop every table of the schema with all its rows, and whatever depends on them, then
    apply the schema and `extensions` afresh."""
    with conn, conn.cursor() as cur:
        tables = sql.SQL(", ").join(sql.Identifier(table) for table in TABLES)
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(tables))
    apply_schema(conn, extensions)


# What to do about an error PostgreSQL reports, by its SQLSTATE (class = the first two
# characters). Anything not listed stops the run: a loop that retries what cannot heal would
# stop the feed silently instead.
_TRANSIENT_CLASSES = {"08", "40"}  # connection lost; serialization failure, deadlock
_TRANSIENT_CODES = {
    "57P01",  # admin_shutdown: the server is stopping or restarting
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now: still starting
    "57014",  # query_canceled: statement_timeout, or a cancel from outside
    "55P03",  # lock_not_available: lock_timeout
    "55006",  # object_in_use
    "53000",  # insufficient_resources
    "53200",  # out_of_memory
    "53300",  # too_many_connections
    "53400",  # configuration_limit_exceeded
}
# Refused for what the data is: data exceptions, constraint violations, limits, a trigger's RAISE.
_PERMANENT_CLASSES = {"22", "23", "54", "P0"}
_SCHEMA_CODES = {"42P01", "42703", "42704", "42883", "3F000"}  # no such table, column, ...
_GONE_CODES = {"3D000", "57P04"}  # the database does not exist, or was dropped
_COORDINATES = "_kafka_coordinates"


def classify(error: Exception) -> PipelineError:
    """The project's error for a database failure, by what to do about it: retry (transient),
    set the data aside (permanent), or stop with an exit code (fatal).

    Errors that are not PostgreSQL's (no SQLSTATE, such as a connection that dropped) are
    transient; anything raised while turning messages into rows is permanent.
    """
    if isinstance(error, PipelineError):
        return error
    if not isinstance(error, psycopg2.Error):
        return PermanentError(f"{type(error).__name__}: {error}")
    code = error.pgcode
    text = _first_line(error)
    if code is None:
        return TransientError(f"database connection lost ({text})")
    said = f"{code} {text}"
    if code[:2] in _TRANSIENT_CLASSES or code in _TRANSIENT_CODES:
        return TransientError(f"database unavailable ({said})")
    if code == "23505" and _COORDINATES in (error.diag.constraint_name or ""):
        return FatalError(
            f"a message is already stored but kafka_offset does not say so ({said}):"
            " kafka_offset was edited or reset; restore it, or reset the database",
            ExitCode.DATABASE_REFUSED,
        )
    if code[:2] in _PERMANENT_CLASSES:
        return PermanentError(said)
    if code in _SCHEMA_CODES:
        return FatalError(
            f"schema missing or out of date ({said}): run `python -m stack schema`",
            ExitCode.SCHEMA_MISSING,
        )
    if code in _GONE_CODES:
        return FatalError(f"database gone ({said})", ExitCode.DATABASE_UNREACHABLE)
    return FatalError(
        f"database refused the write ({said}): permission, disk or server state",
        ExitCode.DATABASE_REFUSED,
    )


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__

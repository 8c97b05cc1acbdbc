"""Connections to PostgreSQL and the schema: connect with clear errors, apply, reset."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from lmnh.config import DatabaseSettings
from lmnh.errors import ExitCode, FatalError, TransientError

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schema.sql"
VIEWS_FILE = SCHEMA_FILE.parent / "dashboard" / "views.sql"
ROLES_FILE = SCHEMA_FILE.parent / "roles.sql"  # grants on all of the above, so it comes last
# Everything schema.sql and views.sql create, children before parents, for --reset.
TABLES = (
    "rating_rollup",
    "request_rollup",
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


def create_database(
    server: DatabaseSettings, name: str, *, schema: bool = True
) -> DatabaseSettings:
    """A new database `name` on the server `server` points at, with the schema applied unless
    `schema` is False; returns its settings."""
    execute_outside_transaction(server, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    database = replace(server, name=name)
    if schema:
        conn = connect(database)
        try:
            apply_schema(conn)
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


def apply_schema(conn: Connection) -> None:
    """Create what is missing and seed the reference data; never drops or deletes."""
    with conn, conn.cursor() as cur:
        cur.execute(SCHEMA_FILE.read_text(encoding="utf-8"))
        cur.execute(VIEWS_FILE.read_text(encoding="utf-8"))
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


def reset_schema(conn: Connection) -> None:
    """Drop every table of the schema with all its rows, then apply the schema afresh."""
    with conn, conn.cursor() as cur:
        tables = sql.SQL(", ").join(sql.Identifier(table) for table in TABLES)
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(tables))
    apply_schema(conn)


def is_transient(error: BaseException) -> bool:
    """Errors that waiting can heal: the server went away or is restarting."""
    return isinstance(error, psycopg2.OperationalError | psycopg2.InterfaceError | TransientError)

"""Connections to PostgreSQL and the schema: connect with clear errors, apply, reset."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import cursor as Cursor

from lmnh.config import DatabaseSettings
from lmnh.errors import ExitCode, FatalError, PermanentError, PipelineError, TransientError
from lmnh.schema_version import APPLY_COMMAND, LEDGER, refusal

# The schema as files: schema.sql for `psql -f schema.sql` on an empty database, roles.sql for
# the grants. The migrations (lmnh/migrations, applied by `apply_schema`) make the same, with
# the dashboard's views.sql, which a test checks.
SCHEMA_FILE = Path(__file__).resolve().parent / "schema.sql"
ROLES_FILE = SCHEMA_FILE.parent / "roles.sql"  # grants on all the others, so it comes last
# The tables of schema.sql, children before parents: those a database must have.
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
# What libpq says when the server's certificate, or TLS itself, is refused: waiting won't help.
_TLS_REFUSALS = ("certificate", "does not match host name", "server does not support SSL")


def connect(db: DatabaseSettings, *, application_name: str = "lmnh") -> Connection:
    """Open a connection, or say what to fix.

    Every connection notices a silent server within seconds (`db.liveness`: TCP keepalives
    while idle, `tcp_user_timeout` while data is unacknowledged, `connect_timeout` per host),
    and with several hosts it takes the one `target_session_attrs` asks for (the primary).
    Authentication, TLS and a missing database cannot heal by waiting (`FatalError`); a server
    that is down or unreachable may come back (`TransientError`).
    """
    live = db.liveness
    parameters: dict[str, Any] = {
        "host": db.host,
        "port": ",".join(map(str, db.ports)) if db.ports else db.port,
        "dbname": db.name,
        "user": db.username,
        "password": db.password.reveal(),
        "sslmode": db.sslmode or "prefer",
        "connect_timeout": live.connect_timeout_s,
        "keepalives": 1,
        "keepalives_idle": live.keepalives_idle_s,
        "keepalives_interval": live.keepalives_interval_s,
        "keepalives_count": live.keepalives_count,
        "tcp_user_timeout": live.tcp_user_timeout_ms,
        "application_name": application_name,
    }
    if db.sslrootcert:
        parameters["sslrootcert"] = db.sslrootcert
    if db.target_session_attrs:
        parameters["target_session_attrs"] = db.target_session_attrs
    try:
        conn: Connection = psycopg2.connect(**parameters)
    except psycopg2.OperationalError as error:
        text = str(error).strip()
        message = _refusal(text) or (text.splitlines()[-1] if text else "no answer")
        where = f"{db.username}@{db.where}/{db.name}"
        if any(refusal in text for refusal in _TLS_REFUSALS):
            raise FatalError(
                f"database at {where} refused over TLS ({message}): with DB_SSLMODE="
                f"{db.sslmode}, DB_SSLROOTCERT must name the CA that signed the server's"
                " certificate and DB_HOST the name on it",
                ExitCode.DATABASE_UNREACHABLE,
            ) from None
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
    # A server that freezes right after taking the connection must not hold its opener.
    with bounded(conn, db.liveness.connect_timeout_s):
        _ask_server_for_keepalives(conn, db)
    return conn


def _ask_server_for_keepalives(conn: Connection, db: DatabaseSettings) -> None:
    """The server's side of the same bounds, for this session: one whose client went silent
    ends within seconds, with its locks, instead of after the server's default two hours.
    Set after connecting rather than as a startup option, which a connection pooler may
    refuse; a server or pooler that refuses the settings leaves them at its own."""
    live = db.liveness
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT set_config('tcp_keepalives_idle', %s, false),"
                " set_config('tcp_keepalives_interval', %s, false),"
                " set_config('tcp_keepalives_count', %s, false),"
                " set_config('tcp_user_timeout', %s, false)",
                [
                    str(live.keepalives_idle_s),
                    str(live.keepalives_interval_s),
                    str(live.keepalives_count),
                    str(live.tcp_user_timeout_ms),
                ],
            )
        conn.commit()
    except psycopg2.Error:
        with contextlib.suppress(psycopg2.Error):
            conn.rollback()


def tried_last(db: DatabaseSettings, host: str, port: int) -> DatabaseSettings:
    """`db` with the server at host:port moved to the end of its hosts: libpq tries them in
    order, each for up to the connect timeout, and one that does not answer should not hold
    every new connection first."""
    hosts = db.host.split(",")
    ports = list(db.ports) or [db.port] * len(hosts)
    if len(hosts) < 2 or (host, port) not in zip(hosts, ports, strict=True):  # noqa: PLR2004
        return db
    pairs = sorted(zip(hosts, ports, strict=True), key=lambda pair: pair == (host, port))
    return replace(
        db,
        host=",".join(h for h, _ in pairs),
        port=pairs[0][1],
        ports=tuple(p for _, p in pairs) if db.ports else (),
    )


@contextlib.contextmanager
def bounded(conn: Connection, seconds: float) -> Iterator[None]:
    """What the block asks of `conn` is cut off (`sever`) if it takes longer than `seconds`:
    for the questions no watchdog watches yet, to a server that may freeze meanwhile."""
    timer = threading.Timer(seconds, sever, (conn,))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def sever(conn: Connection) -> None:
    """Shut a connection's socket down from any thread, so that a thread blocked on it (a
    server that never answers: frozen, or gone with its packets) gets an error at once and
    closes it. The server's side is not told; its backend ends when it notices."""
    if conn.closed:
        return
    try:
        fd = os.dup(conn.fileno())
    except (psycopg2.Error, OSError):  # closed meanwhile
        return
    with socket.socket(fileno=fd) as sock, contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _refusal(text: str) -> str | None:
    """libpq's line that says why, among the lines it gives per host tried."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if any(refusal in line for refusal in _TLS_REFUSALS):
            return line.removeprefix("FATAL:").strip()
    return None


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


def applied_migrations(conn: Connection) -> list[str] | None:
    """The migrations the database's ledger records as applied, in order; None if it has no
    ledger (an empty database, or one made by a release from before migrations)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (LEDGER,))
        row = cur.fetchone()
        if not (row and row[0]):
            conn.rollback()
            return None
        cur.execute(
            sql.SQL("SELECT migration_id FROM {} ORDER BY applied_at_utc, migration_id").format(
                sql.Identifier(LEDGER)
            )
        )
        applied = [row[0] for row in cur.fetchall()]
    conn.rollback()
    return applied


def require_schema(conn: Connection, *, from_schema_sql: bool = False) -> None:
    """Refuse a database whose schema is at another version than this code's (exit 6), with
    one line that says what to run. `from_schema_sql`: also take one made by this release's
    schema.sql alone (`psql -f schema.sql`, the original design's way: every table there and
    already partitioned, no ledger), which holds all the pipeline needs."""
    try:
        applied = applied_migrations(conn)
        missing = missing_tables(conn) if applied is None else []
        if from_schema_sql and applied is None and not missing and made_by_schema_sql(conn):
            return
    except psycopg2.Error as error:
        raise classify(error) from None
    reason = refusal(applied, missing)
    if reason:
        raise FatalError(reason, ExitCode.SCHEMA_MISSING)


def made_by_schema_sql(conn: Connection) -> bool:
    """Whether a database without a ledger was made by this release's schema.sql rather than
    by a release from before migrations: its fact tables are partitioned already."""
    with conn.cursor() as cur:
        cur.execute("SELECT relkind = 'p' FROM pg_class WHERE oid = 'rating_interaction'::regclass")
        row = cur.fetchone()
    conn.rollback()
    return bool(row and row[0])


def apply_schema(conn: Connection, extensions: Sequence[Path] = ()) -> list[str]:
    """Apply the migrations the database lacks (`lmnh.migrate`: the pipeline's tables, the
    dashboard's views and rollups, the roles), then each of `extensions`, files of idempotent
    SQL applied again on every call; return the migrations applied. Never drops or deletes."""
    # yoyo is imported here, where the schema is applied, so that the pipeline and the
    # dashboard, which only check the version, start without it.
    from lmnh.migrate import apply_migrations  # noqa: PLC0415

    applied = apply_migrations(conn)
    if extensions:
        with conn, conn.cursor() as cur:
            for extension in extensions:
                cur.execute(extension.read_text(encoding="utf-8"))
    return applied


def table_row_counts(conn: Connection) -> dict[str, int]:
    """Rows in each table of the database's schema: what a reset would delete."""
    counts: dict[str, int] = {}
    with conn, conn.cursor() as cur:
        for table in _schema_tables(cur):
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            row = cur.fetchone()
            counts[table] = row[0] if row else 0
    return counts


def reset_schema(conn: Connection, extensions: Sequence[Path] = ()) -> None:
    """Drop every table of the database's schema with all its rows (the facts, the rollups
    and daily counts, the staff's accounts and sessions, the migrations' ledger) and whatever
    depends on them, then apply the migrations and `extensions` afresh."""
    with conn, conn.cursor() as cur:
        tables = _schema_tables(cur)
        if tables:
            listed = sql.SQL(", ").join(sql.Identifier(table) for table in tables)
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(listed))
    apply_schema(conn, extensions)


def _schema_tables(cur: Cursor) -> list[str]:
    """The tables of the current schema, partitions left to their parents."""
    cur.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
        " AND relkind IN ('r', 'p') AND NOT relispartition ORDER BY relname"
    )
    return [row[0] for row in cur.fetchall()]


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
            f"schema missing or out of date ({said}): run `{APPLY_COMMAND}`",
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

"""Apply the migrations of lmnh/migrations with yoyo, never queueing anyone behind them.

yoyo-migrations: plain SQL files run in order, recorded in a ledger table (`_yoyo_migration`),
on psycopg2, with no ORM. Each migration and its ledger row commit in one transaction, on the
connection we opened (`lmnh.database.connect`: TLS, bounded waits). Every lock is asked for
under `lock_timeout`: a request for a table's lock that waits would hold back every later one,
the pipeline's COPY and the dashboards' reads among them, for as long as the holder runs. One
not granted in time rolls the migration back; it is tried again after a backoff, while the
others work on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import cache
from typing import Any

from psycopg2.extensions import connection as Connection
from yoyo import read_migrations
from yoyo.backends.core.postgresql import PostgresqlBackend
from yoyo.connections import parse_uri

from lmnh import backoff
from lmnh.database import classify, made_by_schema_sql
from lmnh.errors import ExitCode, FatalError
from lmnh.schema_version import LEDGER, MIGRATIONS_DIR

log = logging.getLogger(__name__)
# yoyo says every statement it runs at INFO: a fresh database's schema would log 140 lines.
# Ours says each migration; yoyo's warnings and errors still show.
logging.getLogger("yoyo").setLevel(logging.WARNING)

LOCK_TIMEOUT_S = 3.0
GIVE_UP_S = 300.0
# The SQLSTATEs worth another try on the same connection: a lock not granted in time
# (lock_timeout), a deadlock or serialization failure. Anything else is for the caller.
_RETRIED = {"55P03", "40P01", "40001"}
# pg_advisory_lock's key for "applying migrations": one applier at a time per database, from
# reading the ledger to the last commit, released with the session if it dies.
_APPLIER_KEY = 0x6C6D6E68  # "lmnh"
_PARTITIONS = "0002_partitions"


class _Backend(PostgresqlBackend):  # type: ignore[misc]  # yoyo has no types
    """yoyo's PostgreSQL backend on a connection of ours, which it uses for the migrations and
    the ledger alike and never closes."""

    def __init__(self, conn: Connection) -> None:
        self._ours = conn
        super().__init__(parse_uri("postgresql:///"), LEDGER)

    def connect(self, dburi: Any) -> Connection:
        return self._ours

    def copy(self) -> _Backend:
        return _Backend(self._ours)

    def __exit__(self, *exc_info: object) -> None:
        """Leave the connection open: its opener closes it."""

    def apply_one(self, migration: Any, force: bool = False, mark: bool = True) -> None:
        """A migration's steps and its ledger row in one transaction (yoyo commits them in two,
        and a crash in between would leave a change applied but not recorded). One marked
        `-- transactional: false` (CREATE INDEX CONCURRENTLY) runs as yoyo runs it."""
        if migration.id == _PARTITIONS and made_by_schema_sql(self._ours):
            # It converts unpartitioned tables; a database made by `psql -f schema.sql` of this
            # release has them partitioned already, and running it would lose their DEFAULTs.
            log.info("recording migration %s: the tables are partitioned already", migration.id)
            self.mark_one(migration)
            return
        log.info("applying migration %s", migration.id)  # loaded by _migrations()
        if not migration.use_transactions:
            super().apply_one(migration, force=force, mark=mark)
            return
        self.ensure_internal_schema_updated()
        with self.transaction():
            migration.process_steps(self, "apply", force=force)
            self.log_migration(migration, "apply")
            if mark:
                self.mark_one(migration, log=False)


@cache
def _migrations() -> Any:
    """The migrations, read and split into statements once per process."""
    migrations = read_migrations(str(MIGRATIONS_DIR))
    for migration in migrations:
        migration.load()
    return migrations


def apply_migrations(
    conn: Connection,
    *,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
    give_up_s: float = GIVE_UP_S,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Apply the migrations the database's ledger lacks, in order; return their ids.

    Each lock is waited for at most `lock_timeout_s`; a migration that cannot have one is
    rolled back and tried again after a backoff, for up to `give_up_s` in all, then given up
    with the error (`FatalError`, exit 8): the database is left at the last migration that
    committed. The connection is left as it was given (autocommit, lock_timeout)."""
    autocommit = conn.autocommit
    conn.autocommit = True  # yoyo sends BEGIN and COMMIT itself
    deadline = time.monotonic() + give_up_s
    try:
        with conn.cursor() as cur:
            cur.execute("SET lock_timeout = %s", (f"{round(lock_timeout_s * 1000)}ms",))
        for delay in backoff.delays(0.5, 5.0):
            try:
                return _apply_pending(conn)
            except Exception as error:
                classified = classify(error)
                if getattr(error, "pgcode", None) not in _RETRIED:
                    raise classified from error
                if time.monotonic() + delay > deadline:
                    raise FatalError(
                        f"migrations not applied: a lock was not granted within"
                        f" {lock_timeout_s:g} s for {give_up_s:g} s ({classified}):"
                        " see pg_stat_activity for the sessions holding it",
                        ExitCode.DATABASE_REFUSED,
                    ) from error
                log.warning("%s; migrating again in %.1f s", classified, delay)
                sleep(delay)
        raise AssertionError("unreachable: backoff.delays never ends")
    finally:
        if not conn.closed:
            with conn.cursor() as cur:
                cur.execute("RESET lock_timeout")
            conn.autocommit = autocommit


def _apply_pending(conn: Connection) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (_APPLIER_KEY,))
    try:
        backend = _Backend(conn)
        backend.init_database()
        pending = backend.to_apply(_migrations())
        backend.apply_migrations(pending)
        return [migration.id for migration in pending]
    finally:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (_APPLIER_KEY,))

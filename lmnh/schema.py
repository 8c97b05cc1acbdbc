"""`lmnh-schema apply|status|maintain` (`python -m lmnh.schema` from a checkout): bring the
configured database to the schema version this release expects, say which version it is at, or
keep its monthly partitions (made ahead, retention applied).

`apply` runs the migrations the database's ledger lacks (lmnh/migrations, in order: the
pipeline's tables, the dashboard's views and rollups, the roles), each in one transaction with
its ledger row; a database made by a release from before migrations keeps its data and gets its
version recorded. Locks are waited for at most --lock-timeout seconds at a time, so that the
pipeline and the dashboards are never queued behind a migration; one not granted is tried again
after a backoff, for up to --give-up seconds.

`maintain` runs the database's own maintenance procedure (lmnh.retention): partitions made
PARTITION_MONTHS_AHEAD months ahead, rows of the DEFAULT partitions moved into their
month, raw rejects and load minutes older than RETENTION_REJECTED_DAYS and
RETENTION_LOAD_MINUTE_DAYS dropped with their counts kept. A subcommand here rather than a
program of its own: it needs what `apply` needs (the tables' owner, the same settings, the same
sandboxed unit) and nothing else.

Exit codes: 0 applied (or nothing to apply), `status` finds the expected version, or `maintain`
did every step; 6 `status` or `maintain` finds another version; otherwise one line on stderr
and the code every program uses (lmnh.cli.exit_code_for: 2 configuration, 5 database
unreachable, 8 the database refused, or a lock was not granted in time: for `maintain`, a step
skipped after its tries, which the next run does).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from lmnh import retention
from lmnh.cli import load_settings, positive_number, run
from lmnh.config import DatabaseSettings, RetentionSettings
from lmnh.database import applied_migrations, connect, missing_tables
from lmnh.errors import ExitCode, FatalError
from lmnh.migrate import GIVE_UP_S, LOCK_TIMEOUT_S, apply_migrations
from lmnh.schema_version import EXPECTED, refusal, version_name

PROGRAM = "lmnh-schema"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env-file", type=Path, help="settings file (default ./.env)")
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Apply the schema's migrations to the configured database (DB_*), or say"
        " which version it is at.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    apply = commands.add_parser(
        "apply", parents=[common], help="apply the migrations it lacks (keeps data)"
    )
    apply.add_argument(
        "--lock-timeout",
        type=positive_number,
        default=LOCK_TIMEOUT_S,
        metavar="SECONDS",
        help=f"longest wait for one lock before the migration is tried again (default"
        f" {LOCK_TIMEOUT_S:g})",
    )
    apply.add_argument(
        "--give-up",
        type=positive_number,
        default=GIVE_UP_S,
        metavar="SECONDS",
        help=f"stop trying after this long, exit 8 (default {GIVE_UP_S:g})",
    )
    commands.add_parser(
        "status", parents=[common], help="the version applied and the one expected (exit 6 if not)"
    )
    maintain = commands.add_parser(
        "maintain",
        parents=[common],
        help="make monthly partitions ahead, move rows out of DEFAULT, drop raw rejects and"
        " load minutes past their retention (counts kept); daily, by a timer",
    )
    maintain.add_argument(
        "--lock-timeout",
        type=positive_number,
        default=retention.LOCK_TIMEOUT_S,
        metavar="SECONDS",
        help=f"longest wait for one lock before the step is tried again (default"
        f" {retention.LOCK_TIMEOUT_S:g}); a step tried {retention.ATTEMPTS} times is skipped,"
        " exit 8",
    )
    return parser


def apply(
    database: DatabaseSettings,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
    give_up_s: float = GIVE_UP_S,
) -> int:
    """`lmnh-schema apply`; also the local stack's `python -m stack schema`."""
    conn = connect(database, application_name=PROGRAM)
    try:
        applied = apply_migrations(conn, lock_timeout_s=lock_timeout_s, give_up_s=give_up_s)
    finally:
        conn.close()
    done = ", ".join(applied) if applied else "none needed"
    print(
        f"schema: applied to {database.name} on {database.where}: at version"
        f" {version_name(EXPECTED)} (migrations applied: {done}; nothing dropped)"
    )
    return ExitCode.OK


def status(database: DatabaseSettings) -> int:
    conn = connect(database, application_name=PROGRAM)
    try:
        applied = applied_migrations(conn)
        missing = missing_tables(conn) if applied is None else []
    finally:
        conn.close()
    at = "none (no ledger)" if applied is None else version_name(applied)
    print(f"schema: {database.name} at version {at}; this release expects {version_name(EXPECTED)}")
    reason = refusal(applied, missing)
    if reason:
        print(reason)
        return ExitCode.SCHEMA_MISSING
    return ExitCode.OK


def maintain(
    database: DatabaseSettings,
    kept: RetentionSettings,
    lock_timeout_s: float = retention.LOCK_TIMEOUT_S,
    attempts: int = retention.ATTEMPTS,
) -> int:
    """`lmnh-schema maintain`: one run of the database's maintenance procedure, each step
    printed."""
    steps = retention.maintain(
        database, kept, lock_timeout_s=lock_timeout_s, attempts=attempts, application_name=PROGRAM
    )
    for step in steps:
        print(retention.describe(step))
    print(
        f"{retention.summary(steps)} on {database.name} (rejects kept {kept.rejected_days} days,"
        f" load minutes {kept.load_minute_days} days, {kept.months_ahead} months ahead)"
    )
    if any(step.action == "skipped" for step in steps):
        raise FatalError(
            "maintenance skipped a step whose lock was not granted in time: see"
            " pg_stat_activity for the sessions holding it; the next run does it",
            ExitCode.DATABASE_REFUSED,
        )
    return ExitCode.OK


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(args.env_file)
    if args.command == "apply":
        return apply(settings.database, args.lock_timeout, args.give_up)
    if args.command == "maintain":
        return maintain(settings.database, settings.retention, args.lock_timeout)
    return status(settings.database)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return run(PROGRAM, lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())

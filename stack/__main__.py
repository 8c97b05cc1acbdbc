"""`python -m stack up|down|status [kafka|postgres]`: the local Kafka broker and PostgreSQL;
`python -m stack schema [--reset]`: the production `lmnh-schema apply` (lmnh.schema) on the
configured database, or first drop every table of the schema with its rows.

Exit codes: 0 success; 3 from `status` when a service is not running; on failure one line
on stderr that names the fix and the code every program uses (lmnh.cli.exit_code_for: 2
configuration, 3 Kafka unreachable, 4 Kafka rejected the credentials, 5 database unreachable,
7 topic not creatable, 1 anything else).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lmnh.cli import run
from lmnh.config import Settings, load_config, read_environment
from lmnh.database import connect, reset_schema, table_row_counts
from lmnh.errors import ExitCode
from lmnh.schema import apply as schema_apply
from stack import kafka_broker, postgres_server

NOT_RUNNING = 3
SERVICES = ("kafka", "postgres")
# Start PostgreSQL first: it is quick, and a failure there is found before the slower broker.
UP: dict[str, Callable[[Settings], None]] = {
    "postgres": postgres_server.up,
    "kafka": kafka_broker.up,
}
DOWN: dict[str, Callable[[Settings, bool], None]] = {
    "kafka": kafka_broker.down,
    "postgres": postgres_server.down,
}
STATUS: dict[str, Callable[[Settings], bool]] = {
    "kafka": kafka_broker.status,
    "postgres": postgres_server.status,
}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("service", nargs="?", choices=SERVICES, help="default: both")
    common.add_argument(
        "--env-file", type=Path, help="read settings from this file instead of ./.env"
    )
    parser = argparse.ArgumentParser(
        prog="python -m stack", description="Run the local Kafka broker and PostgreSQL server."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", parents=[common], help="start (idempotent) and create topic/db")
    down = commands.add_parser("down", parents=[common], help="stop; data is kept")
    down.add_argument("--wipe", action="store_true", help="also delete the service's data")
    commands.add_parser("status", parents=[common], help="exit 0 if running, 3 if not")
    schema = commands.add_parser(
        "schema",
        help="apply the schema's migrations, as lmnh-schema apply does (keeps data)",
    )
    schema.add_argument("--env-file", type=Path, help="read settings from this file")
    schema.add_argument(
        "--reset", action="store_true", help="first DROP every table of the schema, with its rows"
    )
    schema.add_argument("--yes", action="store_true", help="do not ask before --reset")
    return parser


def _schema(args: argparse.Namespace, settings: Settings) -> int:
    if not args.reset:
        return schema_apply(settings.database)
    conn = connect(settings.database, application_name="lmnh-schema")
    try:
        where = f"{settings.database.name} on {settings.database.host}:{settings.database.port}"
        print(f"schema --reset deletes these tables of {where} with all their rows:")
        for table, rows in table_row_counts(conn).items():
            print(f"  {table}: {rows} rows")
        if not args.yes and not (
            sys.stdin.isatty() and input("type 'reset' to go on: ") == "reset"
        ):
            print("schema: nothing dropped (pass --yes to reset without asking)")
            return ExitCode.CONFIG
        reset_schema(conn)
        print(f"schema: dropped and re-applied to {where}")
        return ExitCode.OK
    finally:
        conn.close()


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "schema":
        return _schema(args, settings)
    if args.command == "up":
        for name, up in UP.items():
            if args.service in (None, name):
                up(settings)
        return ExitCode.OK
    if args.command == "down":
        for name, down in DOWN.items():
            if args.service in (None, name):
                down(settings, args.wipe)
        return ExitCode.OK
    results = [status(settings) for name, status in STATUS.items() if args.service in (None, name)]
    return ExitCode.OK if all(results) else NOT_RUNNING


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run("python -m stack", lambda: _run(args, load_config(read_environment(args.env_file))))


if __name__ == "__main__":
    sys.exit(main())

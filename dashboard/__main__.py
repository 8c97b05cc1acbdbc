"""`python -m dashboard`: serve the live Exhibitions and Safety dashboards.

Database settings come from the environment or .env, as for the pipeline; without them the
local stack's PostgreSQL is used. Stop with Ctrl-C.

Exit codes: 0 stopped, 1 unexpected error, 2 configuration or usage error (or the dashboard's
requirements are not installed).
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from lmnh.cli import load_settings, positive_int, run
from lmnh.config import DatabaseSettings
from lmnh.database import connect
from lmnh.errors import ConfigError, ExitCode, FatalError, TransientError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dashboard",
        description="Serve the live dashboards: /exhibitions (ratings and popularity) and "
        "/safety (assistance and emergency requests). Filters live in the page's URL.",
        epilog="Exit codes: 0 stopped, 1 unexpected error, 2 configuration or usage.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address (default {DEFAULT_HOST})")
    parser.add_argument(
        "--port", type=positive_int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--refresh-seconds",
        type=positive_int,
        default=30,
        help="how often the pages reload their data, unless their URL says refresh=N (default 30)",
    )
    parser.add_argument(
        "--stale-minutes",
        type=positive_int,
        default=15,
        help="warn on the pages once the newest interaction is older than this (default 15)",
    )
    parser.add_argument("--env-file", type=Path, help="settings file (default ./.env)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run("python -m dashboard", partial(_serve, args))


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from dashboard.app import create_app
    except ImportError as error:
        raise ConfigError(
            [
                f"{error.name} is missing; install the dashboard extra (from the checkout):"
                " .venv/bin/pip install -e '.[dashboard]'"
            ]
        ) from None
    settings = load_settings(args.env_file)
    if not _can_listen(args.host, args.port):
        raise ConfigError(
            [
                f"cannot listen on {args.host}:{args.port} (in use: is the dashboard already"
                " running?); choose another with --port"
            ]
        )
    _check_database(settings.database)
    app = create_app(
        settings.database,
        refresh_seconds=args.refresh_seconds,
        stale_minutes=args.stale_minutes,
    )
    url = f"http://{args.host}:{args.port}"
    print(f"Dashboards: {url}/exhibitions and {url}/safety (Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return ExitCode.OK


def _can_listen(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _check_database(database: DatabaseSettings) -> None:
    """Say at start-up when the database does not answer; the pages show it too, and recover."""
    try:
        connect(database, application_name="lmnh-dashboard").close()
    except (TransientError, FatalError) as error:
        print(f"warning: {error}; the pages will say so until it answers", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

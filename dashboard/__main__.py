"""`python -m dashboard`: serve the live Exhibitions, Safety and Feed pages.

Database settings come from the environment or .env, as for the pipeline; without them the
local stack's PostgreSQL is used. Stop with Ctrl-C: it ends the pages' live streams at once.

Exit codes: 0 stopped (Ctrl-C or SIGTERM), 1 unexpected error, 2 configuration or usage error
(or the dashboard's requirements are not installed), 130 a second Ctrl-C: gave up waiting.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from types import FrameType

from dashboard.pool import APPLICATION_NAME, GRACE_S, SIZE, STATEMENT_TIMEOUT_S, WAIT_S
from lmnh.cli import load_settings, positive_int, run
from lmnh.config import DatabaseSettings
from lmnh.database import connect, require_schema
from lmnh.errors import ConfigError, ExitCode, FatalError, TransientError
from lmnh.museum import clock_from

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dashboard",
        description="Serve the live dashboards: /exhibitions (ratings and popularity) and "
        "/safety (assistance and emergency requests). Filters live in the page's URL.",
        epilog="Exit codes: 0 stopped (Ctrl-C or SIGTERM), 1 unexpected error, 2 configuration"
        " or usage, 130 a second Ctrl-C: gave up waiting.",
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
    parser.add_argument(
        "--pool-size",
        type=positive_int,
        default=SIZE,
        help="database connections the pages' reads may hold at once; a request waits up to"
        f" {WAIT_S:g} s for one, then gets a 503 (default {SIZE}; the live feed has one more)",
    )
    parser.add_argument(
        "--statement-timeout",
        type=positive_int,
        default=STATEMENT_TIMEOUT_S,
        metavar="SECONDS",
        help="cut off a query that runs longer; one with no answer "
        f"{GRACE_S:g} s after that is abandoned (default {STATEMENT_TIMEOUT_S})",
    )
    parser.add_argument(
        "--max-streams",
        type=positive_int,
        help="live streams open at once; a 503 beyond (default 200)",
    )
    parser.add_argument("--env-file", type=Path, help="settings file (default ./.env)")
    parser.add_argument(
        "--clock-start",
        type=instant,
        metavar="INSTANT",
        help="start the server's clock at this ISO 8601 instant with its offset, for a demo or"
        " a test (e.g. 2026-11-25T11:00:00+00:00, a Wednesday mid-morning); it runs on from"
        " there (default: the real clock)",
    )
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

        from dashboard.app import Limits, PageSettings, create_app
        from dashboard.live import MAX_STREAMS
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
        access=settings.access,
        pages=PageSettings(args.refresh_seconds, args.stale_minutes),
        limits=Limits(args.pool_size, args.statement_timeout, args.max_streams or MAX_STREAMS),
        clock=args.clock_start and clock_from(args.clock_start),
    )
    url = f"http://{args.host}:{args.port}"
    print(
        f"Dashboards: {url}/exhibitions, {url}/safety and {url}/feed (Ctrl-C to stop)",
        flush=True,
    )

    class Server(uvicorn.Server):
        """Ends the live streams on Ctrl-C or SIGTERM: uvicorn waits for open answers to
        finish, and a stream to a wall screen never does by itself."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # From a thread of its own: this runs on the main thread wherever the signal found
            # it, possibly inside the listener's lock (a first browser subscribing), which the
            # close takes too: closing here would wait on itself for ever.
            threading.Thread(
                target=app.state.listener.close, name="lmnh-dashboard-stop", daemon=True
            ).start()
            super().handle_exit(sig, frame)
            # Stopped as asked: exit 0, as the pipeline does, rather than uvicorn raising the
            # signal again once stopped (130, or killed by SIGTERM, by how the shell started us).
            self._captured_signals.clear()

    server = Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))
    server.run()
    return ExitCode.INTERRUPTED if server.force_exit else ExitCode.OK


def instant(text: str) -> datetime:
    """An ISO 8601 instant with its offset (a bare local time would be ambiguous)."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 instant") from None
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no offset (add +00:00 or Z)")
    return at


def _can_listen(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _check_database(database: DatabaseSettings) -> None:
    """Say at start-up when the database does not answer (the pages show it too, and
    recover); refuse one whose schema is at another version than this release's (exit 6)."""
    try:
        conn = connect(database, application_name=APPLICATION_NAME)
    except (TransientError, FatalError) as error:
        print(f"warning: {error}; the pages will say so until it answers", file=sys.stderr)
        return
    try:
        require_schema(conn)
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())

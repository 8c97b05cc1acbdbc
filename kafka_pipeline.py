"""Load the LMNH kiosk feed from Kafka into PostgreSQL: every message validated, stored exactly
once as a rating, a request or a rejection with its reason.

Exit codes: 0 done (also after a requested stop), 1 unexpected error, 2 configuration or usage,
3 Kafka broker unreachable, 4 Kafka authentication failed, 5 database unreachable or login
refused, 6 database schema missing, 7 topic missing or recreated, 8 database refused the write
(permission, disk full, read-only), 130 stopped by a second signal (batch in hand abandoned).
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import threading
from functools import partial
from pathlib import Path

from lmnh.cli import (
    load_settings,
    positive_int,
    positive_number,
    run,
    stop_on_signals,
    whole_number,
)
from lmnh.errors import ExitCode
from lmnh.events import KafkaMessage, Rejection, storable_text
from lmnh.kafka_source import KafkaSource
from lmnh.metrics import MetricsServer, PipelineMetrics
from lmnh.pipeline import Pipeline, RunOptions
from lmnh.store import Store
from lmnh.validation import validate_message

__all__ = ["main", "validate_message"]

DEFAULT_LIMIT = 100_000
# Loopback: the endpoint has no authentication and tells about the feed; a Prometheus or a probe
# elsewhere is let in on purpose, with --metrics-host.
DEFAULT_METRICS_HOST = "127.0.0.1"
# Each message makes a few short-lived objects, none of them in a cycle, so reference counting
# frees them; the cyclic collector's default pass every 700 allocations cost about a tenth of
# the process's CPU (docs/benchmark.md). It still runs, every 50,000.
GC_THRESHOLDS = (50_000, 20, 100)
_MAX_PORT = 65535
_RAW_SHOWN_BYTES = 200

log = logging.getLogger("lmnh")
rejected_log = logging.getLogger("lmnh.rejected")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kafka_pipeline.py",
        description="Consume kiosk messages from Kafka, validate each one, and load it into "
        "PostgreSQL exactly once. Connection settings come from the environment or .env "
        "(see .env.example); without them the local stack (`python -m stack up`) is used.",
        epilog="Exit codes: 0 done, 1 unexpected error, 2 configuration, 3 broker unreachable, "
        "4 Kafka authentication, 5 database unreachable, 6 schema missing, 7 topic missing or "
        "recreated, 8 database refused the write, 130 a second signal abandoned the batch.",
    )
    parser.add_argument("--topic", default="lmnh", help="Kafka topic to consume (default: lmnh)")
    stopping = parser.add_mutually_exclusive_group()
    stopping.add_argument(
        "--limit",
        type=positive_int,
        help=f"stop after exactly this many messages (default: {DEFAULT_LIMIT})",
    )
    stopping.add_argument(
        "--follow", action="store_true", help="run until stopped (Ctrl-C or SIGTERM)"
    )
    parser.add_argument(
        "--logfile", type=Path, help="log invalid messages to this file instead of the terminal"
    )
    parser.add_argument(
        "--group-id", help="consumer group (default: KAFKA_GROUP_ID or lmnh-pipeline)"
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--from-beginning",
        action="store_true",
        help="a partition the database has never loaded starts at the oldest message the topic"
        " holds (the default); one it has loaded always resumes where it stopped",
    )
    start.add_argument(
        "--from-newest",
        action="store_true",
        help="a partition the database has never loaded starts at the newest message: only what"
        " arrives from now on is loaded",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=10000, help="messages per transaction"
    )
    parser.add_argument(
        "--batch-timeout-ms",
        type=whole_number,
        default=0,
        help="while the database is free, wait this long after a batch's first message for "
        "more (default: 0, group commit: store as soon as the database is free)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="without --follow, stop once no message has arrived for this long (default: 10)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how long to wait for the broker and the database at start (default: 15)",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics and the pipeline's health on"
        " /health (200 healthy, 503 not: JSON says why); default: no metrics server",
    )
    parser.add_argument(
        "--metrics-host",
        default=DEFAULT_METRICS_HOST,
        help=f"address the metrics server listens on (default {DEFAULT_METRICS_HOST}: this"
        " machine only; 0.0.0.0 to let a Prometheus elsewhere scrape it)",
    )
    parser.add_argument(
        "--health-stall-seconds",
        type=positive_number,
        default=60.0,
        metavar="SECONDS",
        help="/health reports the pipeline stalled once messages wait to be stored and nothing"
        " was committed for this long (default: 60)",
    )
    parser.add_argument("--env-file", type=Path, help="read settings from this file, not .env")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _configure_logging(args.logfile)
    return run(
        "kafka_pipeline.py",
        partial(_load, args),
        interrupted="the batch in hand was abandoned (rolled back, its offsets not committed);"
        " the next run loads it",
    )


def _load(args: argparse.Namespace) -> int:
    settings = load_settings(args.env_file)
    gc.freeze()  # what is loaded by now lives as long as the process: never scanned again
    gc.set_threshold(*GC_THRESHOLDS)
    stop = threading.Event()
    stop_on_signals(stop, log, "stopping after the batch in hand")
    options = RunOptions(
        limit=None if args.follow else (args.limit or DEFAULT_LIMIT),
        batch_size=args.batch_size,
        batch_timeout_s=args.batch_timeout_ms / 1000,
        idle_timeout_s=None if args.follow else args.idle_timeout,
    )
    metrics = PipelineMetrics()
    # Listening first: a port already taken is a usage error, said before connecting anywhere.
    server = (
        MetricsServer(metrics, args.metrics_host, args.metrics_port) if args.metrics_port else None
    )
    store = Store(settings.database)
    pipeline = Pipeline(store, options, _log_rejected, stop, metrics)
    source: KafkaSource | None = None
    try:
        store.check(args.startup_timeout)
        source = KafkaSource(
            settings.kafka,
            args.topic,
            args.group_id or settings.kafka.group_id,
            from_beginning=not args.from_newest,
            start_offsets=pipeline.start_offsets,
            before_revoke=pipeline.drain,
        )
        source.check(args.startup_timeout)
        metrics.watch(
            source.group_state, pipeline.load_state, args.topic, args.health_stall_seconds
        )
        source.subscribe()
        stats = pipeline.run(source)
    finally:
        if server is not None:
            server.stop()
        if source is not None:
            source.close()
        store.close()
    print(stats.summary())
    return ExitCode.OK


def _port(text: str) -> int:
    """argparse type: a TCP port number."""
    port = positive_int(text)
    if port > _MAX_PORT:
        raise argparse.ArgumentTypeError(f"{text} is not a port number (1 to {_MAX_PORT})")
    return port


def _configure_logging(logfile: Path | None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if logfile is not None:
        handler = logging.FileHandler(logfile, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        rejected_log.addHandler(handler)
        rejected_log.propagate = False


def _log_rejected(rejected: list[tuple[KafkaMessage, Rejection]]) -> None:
    """One log record per batch, a line per invalid message: a record each would cost more
    than validating the message."""
    lines = []
    for message, rejection in rejected:
        raw = b"" if message.value is None else message.value
        shown = raw[:_RAW_SHOWN_BYTES].decode("utf-8", "backslashreplace")
        more = f" (+{len(raw) - _RAW_SHOWN_BYTES} bytes)" if len(raw) > _RAW_SHOWN_BYTES else ""
        lines.append(
            f"invalid {message.topic}[{message.partition}]@{message.offset}"
            f" {storable_text(str(rejection))} | {shown!r}{more}"
        )
    rejected_log.warning("%s", "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

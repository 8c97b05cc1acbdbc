"""Simulate the LMNH kiosks: realistic traffic, with the live feed's mix of invalid messages,
produced to Kafka. Prints, as JSON, exactly what the broker acknowledged.

Exit codes: 0 every message acked (also after Ctrl-C), 1 some deliveries failed or an
unexpected error, 2 configuration or usage, 3 broker unreachable, 4 Kafka authentication,
7 topic missing, 130 interrupted twice (unacknowledged messages given up).
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

from lmnh.cli import fail, load_settings, positive_int, positive_number, run, stop_on_signals
from lmnh.config import KafkaSettings
from lmnh.errors import ExitCode, FatalError
from lmnh.kafka_admin import wait_until_ready
from lmnh.museum import LONDON
from simulator.producer import AckedProducer, client_log
from simulator.traffic import (
    DEFAULT_INVALID_SHARE,
    LiveFeed,
    SimulatedMessage,
    Tally,
    TrafficMix,
    Truth,
    backfill,
)
from stack.topics import topic_message_count, topic_partition_counts

PROGRAM = "kiosk_simulator.py"
READY_TIMEOUT_S = 15.0
FLUSH_TIMEOUT_S = 30.0
_LIVE_TICK_S = 0.1

log = logging.getLogger("kiosk_simulator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Send simulated kiosk messages to Kafka: a believable day's traffic over "
        "the six exhibitions, with the live feed's share of invalid messages. Connection "
        "settings come from the environment or .env; without them the local broker "
        "(`python -m stack up`) is used. Examples: `--backfill 30` loads a month of history; "
        "`--rate 5` sends five messages a second until Ctrl-C.",
        epilog="Exit codes: 0 every message acked (also after Ctrl-C), 1 deliveries failed or "
        "unexpected error, 2 configuration or usage, 3 broker unreachable, 4 Kafka "
        "authentication, 7 topic missing, 130 interrupted twice (unacknowledged messages "
        "given up).",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--backfill",
        type=positive_number,
        metavar="DAYS",
        help="history: messages spread over the DAYS days ending at --until, following the "
        "museum's daily shape, sent as fast as the broker acks them",
    )
    mode.add_argument(
        "--rate",
        type=positive_number,
        metavar="N",
        help="live: N messages a second stamped with the current time, until --count or "
        "Ctrl-C (while the museum is closed they are all out of hours, as the pipeline will say)",
    )
    parser.add_argument(
        "--count",
        type=positive_int,
        metavar="N",
        help="total messages (default: with --backfill a realistic day's worth, about 1,500 "
        "valid interactions per weekday; with --rate until stopped)",
    )
    parser.add_argument(
        "--until",
        type=_moment,
        metavar="DATETIME",
        help="end of the --backfill window, an ISO date-time, London time unless it has an "
        "offset (default: now)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        metavar="S",
        help="reproduce a run exactly (default: random; the report shows it)",
    )
    parser.add_argument(
        "--invalid-share",
        type=_share,
        default=DEFAULT_INVALID_SHARE,
        metavar="SHARE",
        help=f"share of invalid messages, 0 to below 1 (default: {DEFAULT_INVALID_SHARE}, as "
        "the live feed); the mix of defects keeps its proportions",
    )
    parser.add_argument("--topic", default="lmnh", help="Kafka topic (default: lmnh)")
    parser.add_argument(
        "--env-file", type=Path, metavar="PATH", help="read settings from this file, not .env"
    )
    parser.add_argument("--report", type=Path, metavar="PATH", help="also write the report here")
    parser.add_argument(
        "--only-into-empty-topic",
        action="store_true",
        help="send nothing if the topic already holds messages (a safe re-run of a backfill)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.until is not None and args.backfill is None:
        parser.error("--until goes with --backfill")
    _configure_logging()
    return run(PROGRAM, partial(_simulate, parser, args))


def _simulate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    settings = load_settings(args.env_file)
    seed: int = args.seed if args.seed is not None else secrets.randbits(32)
    mix = TrafficMix(invalid_share=args.invalid_share)
    history: Iterable[SimulatedMessage] | None = None
    if args.backfill is not None:
        now = datetime.now(LONDON)
        until = args.until or now
        try:
            history = backfill(
                seed, until - timedelta(days=args.backfill), until, now, args.count, mix
            )
        except (ValueError, OverflowError) as error:
            parser.error(f"--backfill {args.backfill:g} --until {until.isoformat()}: {error}")

    tally = Tally()
    producer = _connect(settings.kafka, args.topic, tally)
    if args.only_into_empty_topic:
        held = topic_message_count(settings.kafka, args.topic)
        if held:
            print(
                f"topic {args.topic} already holds {held} messages: nothing sent", file=sys.stderr
            )
            return ExitCode.OK

    stop = threading.Event()
    stop_on_signals(stop, log, "stopping; waiting for the broker's acks")
    started = time.monotonic()
    if history is not None:
        exit_code = _send_and_flush(producer, partial(_send_history, producer, history, stop))
    else:
        feed = LiveFeed(seed, mix)
        send_live = partial(_send_live, producer, feed, args.rate, args.count, stop)
        exit_code = _send_and_flush(producer, send_live)
    seconds = time.monotonic() - started

    report = _report(producer, tally, seed, seconds)
    print(json.dumps(report))
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(_summary(report, tally, producer), file=sys.stderr)
    return exit_code


def _configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # librdkafka logs every failed reconnect; the errors that matter arrive as exceptions.
    for chatter in ("lmnh.kafka_admin", client_log.name):
        logging.getLogger(chatter).setLevel(logging.CRITICAL)


def _connect(kafka: KafkaSettings, topic: str, tally: Tally) -> AckedProducer[Truth]:
    """A producer for `topic`, once the broker answers and the topic is known to exist."""
    wait_until_ready(kafka, READY_TIMEOUT_S)
    if topic not in topic_partition_counts(kafka):
        raise FatalError(
            f"topic {topic!r} does not exist on {kafka.bootstrap_servers};"
            " the simulator creates no topics: `python -m stack up` creates lmnh",
            ExitCode.TOPIC_MISSING,
        )
    return AckedProducer[Truth](kafka, topic, tally.add)


def _send_and_flush(producer: AckedProducer[Truth], send: Callable[[], None]) -> int:
    """Send, then wait for the acks; the exit code. After a fatal error or a second Ctrl-C
    the unacknowledged messages are given up at once (and counted as failed)."""
    try:
        send()
        producer.finish(FLUSH_TIMEOUT_S)
    except (FatalError, KeyboardInterrupt) as error:
        producer.finish(0.0)
        return fail(PROGRAM, error, "unacknowledged messages given up")
    return ExitCode.UNEXPECTED if producer.failed else ExitCode.OK


def _send_history(
    producer: AckedProducer[Truth], history: Iterable[SimulatedMessage], stop: threading.Event
) -> None:
    for message in history:
        if stop.is_set():
            return
        producer.send(message.value, message.truth)


def _send_live(
    producer: AckedProducer[Truth],
    feed: LiveFeed,
    rate: float,
    count: int | None,
    stop: threading.Event,
) -> None:
    """Keep `rate` messages a second on average, each stamped when it is made, so no
    timestamp is ever in the future."""
    producer.connect(READY_TIMEOUT_S)
    started = time.monotonic()
    sent = 0
    while not stop.is_set() and (count is None or sent < count):
        due = int((time.monotonic() - started) * rate) + 1
        if count is not None:
            due = min(due, count)
        while sent < due and not stop.is_set():
            message = feed.message(datetime.now(LONDON))
            producer.send(message.value, message.truth)
            sent += 1
        next_due = started + sent / rate
        producer.poll(min(_LIVE_TICK_S, max(0.0, next_due - time.monotonic())))


def _report(
    producer: AckedProducer[Truth], tally: Tally, seed: int, seconds: float
) -> dict[str, object]:
    """What the broker acknowledged, by what the pipeline will make of it."""
    return {
        "topic": producer.topic,
        "seed": seed,
        "sent": tally.total,
        "failed": producer.failed,
        "seconds": round(seconds, 3),
        "acked_per_second": round(tally.total / seconds, 1) if seconds > 0 else 0.0,
        **tally.summary(),
    }


def _summary(report: dict[str, object], tally: Tally, producer: AckedProducer[Truth]) -> str:
    line = (
        f"{tally.total:,} messages acked to {producer.topic} in {report['seconds']} s"
        f" ({report['acked_per_second']}/s): {tally.valid:,} valid,"
        f" {tally.total - tally.valid:,} invalid; {producer.failed:,} failed; seed {report['seed']}"
    )
    if producer.first_failure is None:
        return line
    return f"{line}; first failure: {producer.first_failure}"


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=LONDON) if moment.tzinfo is None else moment.astimezone(LONDON)


def _share(text: str) -> float:
    share = float(text)
    if not 0.0 <= share < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share from 0 to below 1")
    return share


if __name__ == "__main__":
    sys.exit(main())

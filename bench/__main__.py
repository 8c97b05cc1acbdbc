"""`python -m bench`: the pipeline against the original design, the peers a user would pick
instead and the machine's ceilings, on the local stack, in one run. Prints one table and
writes the same figures as JSON under bench/results/.

Exit codes: 0 done, 1 a contender gave a wrong result or the run failed, 2 usage, 3 the local
stack is not running (`python -m stack up`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench import ceilings, original_loader
from bench.freshness import POLL_INTERVAL_S, OffsetMonitor, commit_delays
from bench.local import (
    ROOT,
    BenchError,
    PipelineRun,
    Progress,
    Resources,
    fingerprint,
    finish_pipeline,
    local_settings,
    pipeline_command,
    produce,
    query,
    read_topic,
    require_exactly,
    run_pipeline,
    start_pipeline,
    stored_rows,
)
from bench.machine import code_digest, describe, git_state
from bench.peers import prepare as prepare_peers
from bench.peers import run_peers
from bench.report import Summary, parse_sizes, percentile, rate, ratios, render, thousands
from lmnh.cli import positive_int, run
from lmnh.config import DatabaseSettings, Settings
from lmnh.database import connect
from lmnh.events import KafkaMessage, Outcome, Rejection
from lmnh.kafka_admin import wait_until_ready
from lmnh.store import Store
from lmnh.validation import validate

RESULTS = ROOT / "bench" / "results"
# The pipeline writes over one connection (its writer thread; the other only reads): the
# ceiling that matches it is COPY over one. Two show what parallel writers could reach.
OURS_CONNECTIONS = 1
SCALED_OUT = 2  # processes in one group, each writing over its own connection
CEILING_CONNECTIONS = (OURS_CONNECTIONS, SCALED_OUT)
LOADED_POLL_S = 0.02
JOIN_TIMEOUT_S = 60.0
CATCH_UP_TIMEOUT_S = 120.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark kafka_pipeline.py on the local stack (`python -m stack up`): "
        "against the original design's row-at-a-time loader, Quix Streams and Kafka Connect "
        "with the Debezium JDBC sink, PostgreSQL COPY and a do-nothing Kafka consumer; its "
        "freshness at a steady rate and its memory by run size. Every contender gets its own "
        "topic reads, database and consumer group; all are removed at the end. Figures are "
        "only comparable within one run.",
    )
    parser.add_argument(
        "--n", type=positive_int, default=1_000_000, help="messages produced (default 1000000)"
    )
    parser.add_argument(
        "--baseline-sample",
        type=positive_int,
        default=20_000,
        help="messages the original design's loader runs over (default 20000)",
    )
    parser.add_argument(
        "--freshness-rate",
        type=positive_int,
        default=2000,
        help="messages a second produced for freshness (default 2000)",
    )
    parser.add_argument(
        "--freshness-seconds",
        type=positive_int,
        default=60,
        help="seconds of steady production for freshness (default 60)",
    )
    parser.add_argument("--skip-freshness", action="store_true", help="do not measure freshness")
    parser.add_argument(
        "--skip-peers",
        action="store_true",
        help="do not run the peers (Quix Streams; Kafka Connect with the Debezium JDBC sink)",
    )
    parser.add_argument(
        "--memory",
        type=_sizes,
        default="100000,1000000,5000000",
        help='run sizes at which to measure peak RSS, a comma list; "" skips (default '
        "100000,1000000,5000000)",
    )
    parser.add_argument(
        "--compare",
        metavar="REVISION",
        nargs="+",
        default=[],
        help="also run kafka_pipeline.py as it was at each of these git revisions, each on "
        "its own schema: A/Bs in the same run",
    )
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS, help="where the JSON goes (bench/results)"
    )
    return parser.parse_args(argv)


def _sizes(text: str) -> list[int]:
    try:
        return parse_sizes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
    return run("python -m bench", partial(_bench, args, command), interrupted="nothing written")


def _bench(args: argparse.Namespace, command: str) -> int:
    settings = local_settings()
    wait_until_ready(settings.kafka, 15)
    connect(settings.database).close()
    started = datetime.now(UTC)
    progress = Progress()
    resources = Resources(settings, started.strftime("%Y%m%d%H%M%S"))
    result: dict[str, Any] = {
        "command": command,
        "started_at": started.isoformat(timespec="seconds"),
        "git": git_state(),
        "machine": describe(settings.database),
        "settings": {
            "n": args.n,
            "baseline_sample": min(args.baseline_sample, args.n),
            "freshness_rate": None if args.skip_freshness else args.freshness_rate,
            "freshness_seconds": None if args.skip_freshness else args.freshness_seconds,
            "memory": args.memory,
            "peers": not args.skip_peers,
            "copy_chunk": ceilings.COPY_CHUNK,
        },
    }
    if not args.skip_peers:  # their virtualenv and jars, made before any timing (once)
        result["peers_prepared"] = asdict(prepare_peers(progress))
    try:
        with tempfile.TemporaryDirectory(prefix="lmnh-bench-") as scratch:
            _run(args, settings, resources, Path(scratch), result, progress)
    finally:
        progress("removing the run's databases, topics and consumer groups")
        resources.close()

    result["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["code_changed_during_run"] = code_digest() != result["git"]["code_sha256"]
    if result["code_changed_during_run"]:
        progress("warning: the pipeline's code changed during the run: figures may mix versions")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print()
    print(render(result))
    print()
    print(f"written to {_shown(path)}")
    return 0


def _run(
    args: argparse.Namespace,
    settings: Settings,
    resources: Resources,
    scratch: Path,
    result: dict[str, Any],
    progress: Progress,
) -> None:
    n: int = args.n
    memory_sizes: list[int] = args.memory

    # Everything is produced before any timing starts.
    topic = resources.topic("main")
    progress(f"producing {thousands(n)} messages into {topic}")
    report = produce(topic, n)
    result["produced"] = {
        "messages": report["sent"],
        "valid": report["valid"],
        "invalid_share": round(1 - report["valid"] / report["sent"], 4),
        "seconds": report["seconds"],
        "acked_per_second": report["acked_per_second"],
    }
    memory_topic = topic
    if memory_sizes and max(memory_sizes) > n:
        memory_topic = resources.topic("memory")
        progress(f"producing {thousands(max(memory_sizes))} messages into {memory_topic}")
        produce(memory_topic, max(memory_sizes))

    contenders: dict[str, Any] = {}
    result["contenders"] = contenders
    kafka = settings.kafka

    progress("Kafka ceiling: consuming every message, doing nothing with it")
    load = os.getloadavg()
    timing = ceilings.kafka_ceiling(kafka, topic, resources.group("kafka"), n)
    contenders["kafka_ceiling"] = _figures(
        timing.messages,
        timing.seconds,
        "consume(10000) with the pipeline's consumer settings, nothing done",
        load,
    )
    progress(f"  {_rate_line(contenders['kafka_ceiling'])}")

    progress("ours: kafka_pipeline.py over every message")
    ours_db = resources.database("ours")
    contenders["ours"] = _ours(resources, scratch, topic, report, ours_db, "ours", ROOT)
    progress(f"  {_rate_line(contenders['ours'])}; rows verified")
    progress(f"ours, {SCALED_OUT} processes in one group (scaling out, docs/operations.md)")
    contenders["ours_scaled_out"] = _ours_scaled_out(resources, scratch, topic, report)
    progress(f"  {_rate_line(contenders['ours_scaled_out'])}; rows verified")
    result["compared"] = []
    for revision in args.compare:
        progress(f"ours at {revision}: its kafka_pipeline.py on its own schema")
        code, commit = resources.checkout(revision, scratch)
        label = f"compare{len(result['compared'])}"
        database = resources.database(label, code)
        figures = _ours(resources, scratch, topic, report, database, label, code)
        result["compared"].append({**figures, "revision": revision, "commit": commit})
        progress(f"  {_rate_line(figures)}; rows verified")
        resources.drop_database(database)
        resources.drop_database(database)

    progress("database ceiling: reading the topic back and building the COPY text (not timed)")
    copy_db = resources.database("copy")
    store = Store(copy_db)
    try:
        reference = store.load_reference()
    finally:
        store.close()
    now = datetime.now(UTC)

    def judge(message: KafkaMessage) -> Outcome:
        return validate(message.value, reference, now)

    chunks = ceilings.build_chunks(
        read_topic(kafka, topic, resources.group("read")), judge, reference, now
    )
    progress(f"  COPY of the same rows in {len(chunks)} transactions")
    for connections in CEILING_CONNECTIONS:
        if connections > 1:
            resources.drop_database(copy_db)
            copy_db = resources.database(f"copy{connections}")
        resources.checkpoint()
        load = os.getloadavg()
        seconds = ceilings.database_ceiling(copy_db, chunks, connections)
        require_exactly(copy_db, report, "database ceiling")
        if fingerprint(copy_db) != fingerprint(ours_db):
            raise BenchError("database ceiling: its rows differ from those the pipeline stored")
        key = "database_ceiling" if connections == 1 else f"database_ceiling_{connections}"
        contenders[key] = {
            **_figures(
                n,
                seconds,
                f"COPY of the same rows, {thousands(ceilings.COPY_CHUNK)} per transaction,"
                f" over {connections} connection{'s' if connections > 1 else ''}",
                load,
            ),
            "connections": connections,
        }
        progress(f"  {connections} connection(s): {_rate_line(contenders[key])}; rows as ours")
    del chunks
    resources.drop_database(copy_db)
    resources.drop_database(ours_db)

    result["peers"] = None
    if not args.skip_peers:
        peers = run_peers(resources, topic, n, scratch, progress)
        result["peers"] = [asdict(peer) for peer in peers]

    sample = min(args.baseline_sample, n)
    progress(f"baseline: the original design's loader over {thousands(sample)} messages")
    baseline_db = resources.database("baseline")
    resources.checkpoint()
    load = os.getloadavg()
    loaded = original_loader.load(
        kafka, baseline_db, topic, resources.group("baseline"), sample, scratch / "baseline.log"
    )
    rows = stored_rows(baseline_db)
    if loaded.processed != sample or rows != loaded.stored:
        raise BenchError(
            f"baseline: {loaded.processed} messages processed, {loaded.stored} stored,"
            f" {rows} rows in the database"
        )
    agreed = sum(
        1 for value in loaded.values if not isinstance(validate(value, reference, now), Rejection)
    )
    contenders["baseline"] = {
        **_figures(
            sample,
            loaded.seconds,
            "sample; poll(1), a SELECT per key, INSERT and commit per message",
            load,
        ),
        "stored": loaded.stored,
        "invalid": loaded.invalid,
        "valid_by_pipeline_rules": agreed,
    }
    progress(f"  {_rate_line(contenders['baseline'])}")
    if agreed != loaded.stored:
        progress(
            f"  note: the pipeline's rules find {agreed} valid, the original's {loaded.stored}"
        )
    resources.drop_database(baseline_db)

    result["ratios"] = ratios(contenders, result["peers"], result["compared"])

    result["freshness"] = None
    if not args.skip_freshness:
        result["freshness"] = _freshness(args, resources, scratch, progress)

    result["memory"] = []
    for size in memory_sizes:
        progress(f"memory: kafka_pipeline.py over {thousands(size)} messages")
        database = resources.database(f"memory{size}")
        resources.checkpoint()
        run = run_pipeline(
            pipeline_command(
                memory_topic,
                resources.group(f"memory{size}"),
                scratch / f"memory{size}-invalid.log",
                "--limit",
                str(size),
                "--idle-timeout",
                "5",
            ),
            database,
            scratch,
            f"memory{size}",
        )
        summary = _require_clean_run(run, size, f"memory {size}")
        if stored_rows(database) != size:
            raise BenchError(f"memory {size}: {stored_rows(database)} rows stored")
        result["memory"].append(
            {
                "messages": size,
                "peak_rss_kib": run.max_rss_kib,
                "messages_per_second": summary.rate,
                "wall_seconds": round(run.wall_seconds, 3),
            }
        )
        progress(f"  peak RSS {run.max_rss_kib} KiB, {thousands(summary.rate)} msg/s")
        resources.drop_database(database)


def _freshness(
    args: argparse.Namespace,
    resources: Resources,
    scratch: Path,
    progress: Progress,
) -> dict[str, Any]:
    """Start the pipeline in --follow mode, produce at a steady rate, and time each message
    from production (its Kafka CreateTime) to the commit of its row."""
    count = args.freshness_rate * args.freshness_seconds
    topic = resources.topic("fresh")
    database = resources.database("fresh")
    progress(
        f"freshness: kafka_pipeline.py --follow, {thousands(args.freshness_rate)} msg/s"
        f" for {args.freshness_seconds} s"
    )
    command = pipeline_command(
        topic, resources.group("fresh"), scratch / "fresh-invalid.log", "--follow"
    )
    monitor = OffsetMonitor(database, topic)
    process, started = start_pipeline(command, database, scratch, "fresh")
    try:
        joined = scratch / "fresh.err"
        _wait_for(lambda: " assigned " in joined.read_text(), JOIN_TIMEOUT_S, "joining")
        monitor.start()
        report = produce(topic, count, "--rate", str(args.freshness_rate), "--seed", "1")
        _wait_for(
            lambda: monitor.total() >= count or monitor.error is not None,
            CATCH_UP_TIMEOUT_S,
            "catching up",
        )
    finally:
        if monitor.is_alive():
            monitor.stop()
        process.send_signal(signal.SIGTERM)
    run = finish_pipeline(process, started, scratch, "fresh")
    if monitor.error is not None:
        raise BenchError(f"freshness: the offset monitor failed: {monitor.error}")
    if run.exit_code != 0:
        raise BenchError(f"freshness: the pipeline exited {run.exit_code}: {run.stderr[-2000:]}")
    require_exactly(database, report, "freshness")
    produced = [
        (m.partition, m.offset, m.timestamp_ms or 0)
        for m in read_topic(resources.settings.kafka, topic, resources.group("fresh-read"))
    ]
    delays = commit_delays(produced, monitor.seen)
    slowest = max(range(len(delays)), key=delays.__getitem__)
    first_produced = min(timestamp for _, _, timestamp in produced)
    resources.drop_database(database)
    figures = {
        "rate": args.freshness_rate,
        "seconds": args.freshness_seconds,
        "messages": len(delays),
        "produced_per_second": report["acked_per_second"],
        "p50_ms": round(percentile(delays, 0.50), 1),
        "p90_ms": round(percentile(delays, 0.90), 1),
        "p99_ms": round(percentile(delays, 0.99), 1),
        "max_ms": round(delays[slowest], 1),
        # When the slowest message was produced, from the first: tells a start-up hiccup.
        "max_produced_after_s": round((produced[slowest][2] - first_produced) / 1000, 3),
        "mean_ms": round(sum(delays) / len(delays), 1),
        "resolution_ms": POLL_INTERVAL_S * 1000,
        "polls": monitor.polls,
        "mean_poll_query_ms": round(1000 * monitor.query_seconds / max(monitor.polls, 1), 2),
        "stored_as": {
            "ratings_and_requests": report["valid"],
            "rejected": report["sent"] - report["valid"],
        },
        "peak_rss_kib": run.max_rss_kib,
        "how": "production (Kafka CreateTime) to the first poll of kafka_offset that shows the"
        " message's row committed; polls every 20 ms, so each delay is at most one poll late",
    }
    progress(
        f"  p50 {figures['p50_ms']:.0f} ms, p99 {figures['p99_ms']:.0f} ms,"
        f" max {figures['max_ms']:.0f} ms over {thousands(len(delays))} messages"
    )
    return figures


def _ours(
    resources: Resources,
    scratch: Path,
    topic: str,
    report: dict[str, Any],
    database: DatabaseSettings,
    label: str,
    code: Path,
) -> dict[str, Any]:
    """kafka_pipeline.py of the checkout at `code` over every message of `topic`, as users
    run it; its rows checked against what the simulator acknowledged."""
    n = report["sent"]
    resources.checkpoint()
    load = os.getloadavg()
    command = pipeline_command(
        topic,
        resources.group(label),
        scratch / f"{label}-invalid.log",
        "--limit",
        str(n),
        "--idle-timeout",
        "5",
    )
    run = run_pipeline(command, database, scratch, label, code)
    summary = _require_clean_run(run, n, label)
    wall_rate = rate(n, run.wall_seconds)
    require_exactly(database, report, label)
    return {
        **_figures(
            n,
            n / summary.rate,
            f'its own "msg/s while loading"; wall clock {thousands(wall_rate)} msg/s',
            load,
        ),
        "wall_seconds": round(run.wall_seconds, 3),
        "wall_messages_per_second": round(wall_rate, 1),
        "peak_rss_kib": run.max_rss_kib,
        "connections": OURS_CONNECTIONS,
        "summary": run.stdout.strip().splitlines()[-1],
    }


def _ours_scaled_out(
    resources: Resources, scratch: Path, topic: str, report: dict[str, Any]
) -> dict[str, Any]:
    """`SCALED_OUT` kafka_pipeline.py processes in one group over every message, as the
    operations guide scales out. Timed as they run for hours: from the moment every one of
    them holds its share of the partitions (the first to join starts alone, and the group
    rebalances when the next joins) to the commit that completes the topic, by polling the
    offsets the database holds; the messages counted are those loaded in that span."""
    n = report["sent"]
    database = resources.database("scaled")
    group = resources.group("scaled")
    resources.checkpoint()
    load = os.getloadavg()
    labels = [f"scaled{i}" for i in range(SCALED_OUT)]
    started = [
        start_pipeline(
            pipeline_command(
                topic,
                group,
                scratch / f"{label}-invalid.log",
                "--limit",
                str(n),
                "--idle-timeout",
                "5",
            ),
            database,
            scratch,
            label,
        )
        for label in labels
    ]
    logs = [scratch / f"{label}.err" for label in labels]

    def all_hold_a_share() -> bool:
        texts = [log.read_text(encoding="utf-8", errors="replace") for log in logs]
        return all(t.rfind("source: assigned") > t.rfind("source: revoked") for t in texts)

    shared: tuple[float, int] | None = None  # when all held a share, and what was loaded then
    loaded = 0
    while loaded < n:
        if all(process.poll() is not None for process, _ in started):
            raise BenchError(f"scaled out: the processes ended with {loaded} of {n} loaded")
        loaded = int(
            query(database, "SELECT coalesce(sum(next_offset), 0) FROM kafka_offset")[0][0]
        )
        if shared is None and all_hold_a_share():
            shared = (time.monotonic(), loaded)
        time.sleep(LOADED_POLL_S)
    if shared is None or shared[1] >= n:
        raise BenchError("scaled out: the topic was loaded before every process held a share")
    seconds = time.monotonic() - shared[0]
    runs = [
        finish_pipeline(process, at, scratch, label)
        for (process, at), label in zip(started, labels, strict=True)
    ]
    for done, label in zip(runs, labels, strict=True):
        if done.exit_code != 0:
            raise BenchError(
                f"{label}: kafka_pipeline.py exited {done.exit_code}: {done.stderr[-2000:]}"
            )
    consumed = sum(done.summary.consumed if done.summary else 0 for done in runs)
    if consumed != n:
        raise BenchError(f"scaled out: {consumed} consumed for {n} messages")
    require_exactly(database, report, "scaled out")
    resources.drop_database(database)
    return {
        **_figures(
            n - shared[1],
            seconds,
            f"{SCALED_OUT} processes in one group, once each held its share, to the last commit"
            f" (polls of kafka_offset every {LOADED_POLL_S * 1000:.0f} ms); RSS summed",
            load,
        ),
        "peak_rss_kib": sum(done.max_rss_kib for done in runs),
        "connections": SCALED_OUT,
        "shares": [done.summary.consumed if done.summary else 0 for done in runs],
    }


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"freshness: the pipeline was not done {what} in {timeout_s:g} s")
        time.sleep(0.05)


def _require_clean_run(run: PipelineRun, messages: int, who: str) -> Summary:
    """The run's summary, once it is known to have ended well with every message consumed."""
    if run.exit_code != 0:
        raise BenchError(f"{who}: kafka_pipeline.py exited {run.exit_code}: {run.stderr[-2000:]}")
    if run.summary is None or run.summary.consumed != messages:
        raise BenchError(
            f"{who}: kafka_pipeline.py did not report {messages} consumed: {run.stdout}"
        )
    return run.summary


def _figures(
    messages: int, seconds: float, how: str, load: tuple[float, float, float]
) -> dict[str, Any]:
    return {
        "messages": messages,
        "seconds": round(seconds, 3),
        "messages_per_second": round(rate(messages, seconds), 1),
        "how": how,
        "load_average_before": [round(x, 2) for x in load],
    }


def _rate_line(figures: dict[str, Any]) -> str:
    return (
        f"{thousands(figures['messages'])} messages in {figures['seconds']:.1f} s:"
        f" {thousands(figures['messages_per_second'])} msg/s"
    )


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())

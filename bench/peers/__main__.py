"""`python -m bench.peers`: the peers alone, over a freshly produced topic on the local stack,
for trying them out; `python -m bench` runs them beside the pipeline. Everything it creates
is removed at the end.

Exit codes: 0 done, 1 a peer failed or gave a wrong count, 2 usage, 3 the local broker does
not answer, 5 the local database does not answer.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from bench.local import Progress, Resources, local_settings, produce
from bench.peers.harness import PeerResult
from bench.peers.run import prepare, run_peers
from bench.report import format_table, mib, thousands
from lmnh.cli import positive_int, run
from lmnh.database import connect
from lmnh.kafka_admin import wait_until_ready


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description="Run the benchmark's peers (Quix Streams; Kafka Connect with the Debezium"
        " JDBC sink, at its defaults and tuned) over a fresh topic on the local stack"
        " (`python -m stack up`). The first run makes Quix's virtualenv and resolves"
        " Connect's jars under .stack/peers/.",
    )
    parser.add_argument(
        "--n", type=positive_int, default=100_000, help="messages produced (default 100000)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the peers' logs and properties files in this folder, which must not exist"
        " yet (default: a temporary folder, removed at the end)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run("python -m bench.peers", partial(_peers, args.n, args.workdir))


def _peers(n: int, workdir: Path | None) -> int:
    settings = local_settings()
    wait_until_ready(settings.kafka, 15)
    connect(settings.database).close()
    if workdir is not None:
        workdir.mkdir(parents=True)
    progress = Progress()
    prepared = prepare(progress)
    progress(
        f"tools ready (virtualenv {prepared.venv_seconds:.1f} s, jars"
        f" {prepared.jars_seconds:.1f} s; 0 when already there)"
    )
    resources = Resources(settings, "peers" + datetime.now(UTC).strftime("%Y%m%d%H%M%S"))
    try:
        topic = resources.topic("peer_source")
        progress(f"producing {thousands(n)} messages into {topic}")
        started = time.monotonic()
        report = produce(topic, n)
        seconds = time.monotonic() - started
        progress(f"  {report['valid']:,} valid by the pipeline's rules; {seconds:.1f} s")
        if workdir is not None:
            results = run_peers(resources, topic, n, workdir, progress)
        else:
            with tempfile.TemporaryDirectory(prefix="lmnh-bench-peers-") as scratch:
                results = run_peers(resources, topic, n, Path(scratch), progress)
    finally:
        progress("removing the run's databases, topics and consumer groups")
        resources.close()
    print()
    print(render(results))
    return 0


def render(results: list[PeerResult]) -> str:
    """The peers' figures as one table, and their notes under it."""
    rows = [["peer", "messages", "rows", "landed", "seconds", "msg/s", "wall msg/s", "peak RSS"]]
    rows += [
        [
            peer.label,
            thousands(peer.messages),
            thousands(peer.rows_expected),
            thousands(peer.landed),
            f"{peer.seconds:.1f}",
            thousands(peer.messages_per_second),
            thousands(peer.wall_messages_per_second),
            mib(peer.peak_rss_kib),
        ]
        for peer in results
    ]
    lines = [format_table(rows, [False, True, True, True, True, True, True, True])]
    for peer in results:
        lines.append(
            f"\n{peer.label}\n  per message: {peer.per_message}\n  how: {peer.how}"
            f"\n  first row {peer.startup_seconds:.1f} s after its start; wall msg/s from its"
            f" start to its last row ({peer.wall_seconds:.1f} s)"
        )
        lines.extend(f"  note: {note}" for note in peer.notes)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""`python -m bench.live`: how long an emergency takes from the kiosk's produce to the Safety
page's "Now" panel in a real browser, while background traffic flows; with `--browsers N
--soak-minutes M`, N pages stay connected for M minutes while the dashboard server's memory
and database listeners are watched.

On the local stack, with a topic, a database and a consumer group of its own (all removed at
the end, also on Ctrl-C): `kafka_pipeline.py --follow`, `python -m dashboard --clock-start`
(a "pretend now" inside opening hours, so that the validator stores what is produced whatever
the hour) and Debian's chromium driven by Playwright; with `--proxy`, the browser reaches the
dashboard through Caddy and deploy/caddy/Caddyfile over HTTPS, as a museum runs it (bench/proxy.py:
a throwaway CA that the browser trusts). Prints a table; writes the figures as JSON under
bench/results/ only with --save.

Exit codes: 0 done (the table says whether the target was met), 1 an emergency never
appeared, a page was no longer live, the server held other than one database listener, or the
run failed, 2 usage, 3 the local broker does not answer, 5 the local database does not
answer, 130 interrupted (once what the run made is removed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as wall_time
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from bench.freshness import POLL_INTERVAL_S, OffsetMonitor, commit_delays
from bench.local import (
    NO_ENV_FILE,
    PYTHON,
    ROOT,
    BenchError,
    Progress,
    Resources,
    child_env,
    finish_pipeline,
    local_settings,
    pipeline_command,
    query,
    read_topic,
    start_pipeline,
    stop,
)
from bench.machine import describe, git_state
from bench.proxy import browser_home, running_proxy, throwaway_certificates
from bench.proxy import unavailable as proxy_unavailable
from bench.report import format_table, mib, percentile, thousands
from dashboard.sessions import COOKIE, SECURE_COOKIE, session_without_sign_in
from lmnh.cli import positive_int, positive_number, run
from lmnh.config import DatabaseSettings, KafkaSettings
from lmnh.database import connect
from lmnh.errors import ConfigError
from lmnh.kafka_admin import wait_until_ready
from lmnh.museum import CLOSES, LONDON, OPENS
from simulator.producer import AckedProducer, client_log
from simulator.traffic import EXHIBITIONS, LiveFeed, TrafficMix

if TYPE_CHECKING:
    from playwright.sync_api import Page

PROGRAM = "python -m bench.live"
RESULTS = ROOT / "bench" / "results"
CHROMIUM = "/usr/bin/chromium"
# Flags that keep a headless chromium quiet and self-contained: no GPU, no phoning home.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE_PATH = "/safety?request=emergency"
PAGES_LISTED = 10  # more pages than this are summed up, not listed one a row
NOW_PANEL = "#now"  # the Safety page's "Now" panel (dashboard/static/now.js)
TARGET_MS = 2000.0  # the promise: an emergency on the screen within two seconds
DEFAULT_INTERVAL_S = 0.5
# The pretend clock must stay inside opening hours for the whole run: its set-up, its
# traffic and the wait for the last emergency.
RUN_MARGIN = timedelta(hours=1)
FALLBACK_START = wall_time(11, 0)
RSS_SAMPLE_S = 10.0
# Background traffic flows this long, with the pages open, before the first emergency: the
# run times the steady state, not the pipeline's first batches.
WARM_UP_S = 10.0
APPEAR_TIMEOUT_S = 30.0  # after the last emergency's produce, or the soak's end if later
READY_TIMEOUT_S = 15.0
START_TIMEOUT_S = 30.0
PAGE_TIMEOUT_S = 120.0  # 50 pages load their charts on a small machine
CATCH_UP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
PUMP_S = 0.25
_TICK_S = 0.1
_BACKGROUND = -1  # the label of a background message; an emergency's is its number
# The live feed's mix without its emergencies: at 500 msg/s it would press about two a second
# (a museum has a handful a day), the panel would fill with items nobody times, and its size
# would depend on the rate and the length of the run. The Now panel holds the timed ones only.
BACKGROUND_MIX = TrafficMix(emergency_share=0.0)
LISTENER = "lmnh-dashboard-listener"

# Installed in every page before its own scripts: notes when each request item first enters
# the Now panel, on the page's wall clock (time origin plus the monotonic clock), in the
# microtask right after the mutation that added it.
OBSERVER_SCRIPT = """
(() => {
  const panel = "__NOW_PANEL__";
  const seen = new Map();
  const note = (node, shown) => {
    if (!(node instanceof Element)) return;
    const items = node.matches("[data-request-id]") ? [node] : [];
    items.push(...node.querySelectorAll("[data-request-id]"));
    for (const item of items) {
      const id = item.dataset.requestId;
      if (!seen.has(id) && item.closest(panel)) seen.set(id, { item, shown });
    }
  };
  new MutationObserver((records) => {
    const shown = performance.timeOrigin + performance.now();
    for (const record of records) {
      if (record.type === "attributes") note(record.target, shown);
      else record.addedNodes.forEach((node) => note(node, shown));
    }
  }).observe(document, {
    childList: true, subtree: true, attributes: true, attributeFilter: ["data-request-id"],
  });
  window.__lmnhNowSightings = () => Array.from(seen, ([id, { item, shown }]) => (
    { id, at: item.dataset.eventAt || "", shown }
  ));
})();
""".replace('"__NOW_PANEL__"', json.dumps(NOW_PANEL))
# How far a page's clock (time origin plus monotonic time) has drifted from its wall clock.
PAGE_DRIFT_SCRIPT = "performance.timeOrigin + performance.now() - Date.now()"


# The pure part ----------------------------------------------------------------------------


def choose_clock_start(now: datetime, needed: timedelta) -> datetime:
    """The dashboard's "pretend now" for a run that needs `needed` of opening time: the real
    `now` while the museum stays open that long, else the latest 11:00 London before `now`.
    Never in the future, so the validator does not reject what is stamped with it; inside
    opening hours for the whole run, so it does not call it out of hours."""
    local = now.astimezone(LONDON)

    def fits(start: datetime) -> bool:
        closes = datetime.combine(start.date(), CLOSES, tzinfo=LONDON)
        return start.time() >= OPENS and start.astimezone(UTC) + needed <= closes.astimezone(UTC)

    if fits(local):
        return local
    day = local.date() if local.time() >= FALLBACK_START else local.date() - timedelta(days=1)
    start = datetime.combine(day, FALLBACK_START, tzinfo=LONDON)
    if not fits(start):
        raise ValueError(f"a run of {needed} does not fit in one day's opening hours")
    return start


class PretendClock:
    """The dashboard server's clock as the benchmark keeps it: `start` at the monotonic
    instant `anchor`, then real speed. Strictly increasing, so that no two messages share an
    `at` and each emergency's `at` identifies it on the page."""

    def __init__(
        self, start: datetime, anchor: float, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._start = start.astimezone(LONDON)
        self._anchor = anchor
        self._monotonic = monotonic
        self._last: datetime | None = None

    def now(self) -> datetime:
        at = self._start + timedelta(seconds=self._monotonic() - self._anchor)
        if self._last is not None and at <= self._last:
            at = self._last + timedelta(microseconds=1)
        self._last = at
        return at


def emergency_offsets(count: int, interval_s: float, seed: int) -> list[float]:
    """When each emergency is produced, in seconds after the first: `interval_s` apart on
    average, each gap drawn evenly within half of it either side, so that they do not beat in
    step with the pipeline's batches or the page's rhythms."""
    rng = random.Random(seed)  # noqa: S311 - a schedule, not a secret
    offsets = []
    at = 0.0
    for _ in range(count):
        offsets.append(at)
        at += interval_s * (0.5 + rng.random())
    return offsets


def emergency_message(at: datetime, number: int) -> bytes:
    """An emergency press as a kiosk sends it, at the exhibitions in turn."""
    site = EXHIBITIONS[number % len(EXHIBITIONS)].site
    return json.dumps({"at": at.isoformat(), "site": site, "val": -1, "type": 1}).encode()


@dataclass(frozen=True, slots=True)
class Sighting:
    """A request item as a page's observer first saw it in the Now panel."""

    request_id: str
    event_at: str  # its data-event-at, as the page wrote it
    shown_ms: float  # milliseconds since the epoch, on the page's clock


def match_sightings(
    produced: Mapping[datetime, float], sightings: Iterable[Sighting]
) -> tuple[dict[datetime, float], list[datetime]]:
    """Milliseconds from each emergency's produce (epoch seconds, keyed by its `at`) to its
    first sighting, and the emergencies never seen, in order. Items that are not the
    benchmark's emergencies (the background traffic's) are ignored; an item whose
    data-event-at is no instant is a page bug and stops the run."""
    shown: dict[datetime, float] = {}
    for sighting in sightings:
        try:
            at = datetime.fromisoformat(sighting.event_at)
        except ValueError:
            raise BenchError(
                f"request {sighting.request_id}: data-event-at {sighting.event_at!r} is not an"
                " ISO instant"
            ) from None
        if at.tzinfo is None:
            raise BenchError(f"request {sighting.request_id}: data-event-at has no offset")
        if at in produced:
            shown[at] = min(shown.get(at, math.inf), sighting.shown_ms)
    latencies = {at: shown[at] - produced[at] * 1000 for at in produced if at in shown}
    missing = [at for at in sorted(produced) if at not in shown]
    return latencies, missing


def latency_figures(latencies_ms: Sequence[float], missing: int) -> dict[str, Any]:
    """n, p50, p99 and max (nearest rank) of some latencies, how many never appeared, and
    whether the target (p99 under two seconds, none missing) was met."""
    figures: dict[str, Any] = {"n": len(latencies_ms), "missing": missing}
    if latencies_ms:
        figures.update(
            p50_ms=round(percentile(latencies_ms, 0.50), 1),
            p99_ms=round(percentile(latencies_ms, 0.99), 1),
            max_ms=round(max(latencies_ms), 1),
            mean_ms=round(sum(latencies_ms) / len(latencies_ms), 1),
        )
    figures["target_met"] = bool(latencies_ms) and not missing and figures["p99_ms"] < TARGET_MS
    return figures


def latency_results(
    per_page: Sequence[tuple[Mapping[datetime, float], Sequence[datetime]]],
    live: Sequence[bool],
    emergencies: Sequence[datetime],
) -> dict[str, Any]:
    """The figures of each page and of every sighting together, and per emergency those of
    the first page to show it (what the server and the quickest screen manage) and of the
    last (what the slowest screen made people wait; missing unless every page showed it)."""
    pages = []
    everything: list[float] = []
    missing: list[str] = []
    for number, ((latencies, never), is_live) in enumerate(zip(per_page, live, strict=True)):
        values = list(latencies.values())
        everything.extend(values)
        missing.extend(f"{number} {at.isoformat()}" for at in never)
        pages.append(
            {"page": number, **latency_figures(values, len(never)), "live_at_end": is_live}
        )
    by_emergency = []
    first: list[float] = []
    last: list[float] = []
    for at in emergencies:
        seen = [latencies[at] for latencies, _ in per_page if at in latencies]
        if seen:
            first.append(min(seen))
        if seen and len(seen) == len(per_page):
            last.append(max(seen))
        by_emergency.append(
            {
                "at": at.isoformat(),
                "pages": len(seen),
                "first_ms": round(min(seen), 1) if seen else None,
                "last_ms": round(max(seen), 1) if seen else None,
            }
        )
    return {
        "pages": pages,
        "latency": latency_figures(everything, len(missing)),
        "first_page": latency_figures(first, len(emergencies) - len(first)),
        "last_page": latency_figures(last, len(emergencies) - len(last)),
        "missing": missing,
        "by_emergency": by_emergency,
    }


def vm_rss_kib(status: str) -> int:
    """A process's resident memory (KiB) from its /proc/<pid>/status text."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError("the process's status has no VmRSS line: has it exited?")


def slope_per_minute(samples: Sequence[tuple[float, int]]) -> float | None:
    """Least-squares slope (KiB a minute) of (seconds, KiB) samples over the run's second
    half: after start-up and the pages' first loads, memory that keeps growing is a leak.
    None with fewer than two samples there."""
    if not samples:
        return None
    middle = (samples[0][0] + samples[-1][0]) / 2
    half = [(t / 60, kib) for t, kib in samples if t >= middle]
    if len(half) < 2:  # noqa: PLR2004 - a line needs two points
        return None
    mean_t = sum(t for t, _ in half) / len(half)
    mean_kib = sum(kib for _, kib in half) / len(half)
    spread = sum((t - mean_t) ** 2 for t, _ in half)
    if spread == 0:
        return None
    return sum((t - mean_t) * (kib - mean_kib) for t, kib in half) / spread


def rss_figures(samples: Sequence[tuple[float, int]]) -> dict[str, Any]:
    """The dashboard server's memory over the run: first, last and largest sample, and the
    second half's slope."""
    if not samples:
        return {"samples": []}
    slope = slope_per_minute(samples)
    return {
        "start_kib": samples[0][1],
        "end_kib": samples[-1][1],
        "max_kib": max(kib for _, kib in samples),
        "second_half_slope_kib_per_minute": None if slope is None else round(slope, 1),
        "every_seconds": RSS_SAMPLE_S,
        "samples": [[round(t, 1), kib] for t, kib in samples],
    }


def _ms(figures: Mapping[str, Any], key: str) -> str:
    """A latency as the table shows it; a dash when nothing was seen to measure."""
    return f"{thousands(figures[key])} ms" if key in figures else "-"


def _latency_row(label: str, figures: Mapping[str, Any]) -> list[str]:
    return [
        label,
        thousands(figures["n"]),
        _ms(figures, "p50_ms"),
        _ms(figures, "p99_ms"),
        _ms(figures, "max_ms"),
        thousands(figures["missing"]),
        "met" if figures["target_met"] else "NOT MET",
    ]


def render_live(result: Mapping[str, Any]) -> str:
    """The run's figures: latency per page and over all, then the facts it was measured
    under; a loud line when an emergency never appeared."""
    rows = [["emergency produced -> shown", "n", "p50", "p99", "max", "missing", "p99 < 2 s"]]
    pages = result["pages"]
    if len(pages) == 1:
        rows.append(_latency_row("the page", result["latency"]))
    else:
        if len(pages) <= PAGES_LISTED:
            rows.extend(_latency_row(f"page {page['page']}", page) for page in pages)
        rows.append(_latency_row("first page to show each", result["first_page"]))
        rows.append(_latency_row("last page to show each", result["last_page"]))
        rows.append(_latency_row(f"all {len(pages)} pages, all emergencies", result["latency"]))
    lines = [format_table(rows, [False, True, True, True, True, True, False]), ""]

    settings = result["settings"]
    traffic = result["traffic"]
    facts = [["figure", "value"]]
    facts.append(
        [
            "traffic",
            f"{thousands(traffic['background'])} background messages at"
            f" {thousands(traffic['per_second'])} msg/s (asked {thousands(settings['rate'])}),"
            f" plus {thousands(traffic['emergencies'])} emergencies about"
            f" {settings['interval_s']:g} s apart, over {traffic['seconds']:.0f} s",
        ]
    )
    split = result.get("split")
    if split:
        facts.append(
            [
                "of which" if len(pages) == 1 else "of which, first page",
                f"produce -> committed p50 {thousands(split['committed']['p50_ms'])} ms,"
                f" p99 {thousands(split['committed']['p99_ms'])} ms; committed -> shown"
                f" p50 {thousands(split['shown']['p50_ms'])} ms,"
                f" p99 {thousands(split['shown']['p99_ms'])} ms (the commit as 20 ms polls see"
                " it, so give or take 20 ms)",
            ]
        )
    freshness = result.get("freshness")
    if freshness:
        facts.append(
            [
                "pipeline freshness",
                f"p50 {thousands(freshness['p50_ms'])} ms, p99 {thousands(freshness['p99_ms'])}"
                f" ms, max {thousands(freshness['max_ms'])} ms over"
                f" {thousands(freshness['messages'])} messages (produce to commit,"
                f" {freshness['resolution_ms']:.0f} ms polls)",
            ]
        )
    if len(pages) > PAGES_LISTED:
        ranked = sorted(pages, key=lambda page: page.get("p99_ms", math.inf))
        best, median, worst = ranked[0], ranked[len(ranked) // 2], ranked[-1]
        facts.append(
            [
                "pages' own p99",
                f"best {_ms(best, 'p99_ms')} (page {best['page']}), median"
                f" {_ms(median, 'p99_ms')}, worst {_ms(worst, 'p99_ms')} (page {worst['page']})",
            ]
        )
    live = sum(1 for page in pages if page["live_at_end"])
    facts.append(["pages live at the end", f"{live} of {len(pages)}"])
    listeners = result["listeners"]
    facts.append(
        [
            "database listeners",
            f"{listeners['at_end']} at the end; {listeners['min']}-{listeners['max']} over"
            f" {listeners['samples']} samples (want exactly 1)",
        ]
    )
    rss = result["dashboard_rss"]
    if rss.get("samples"):
        slope = rss["second_half_slope_kib_per_minute"]
        facts.append(
            [
                "dashboard server RSS",
                f"start {mib(rss['start_kib'])}, end {mib(rss['end_kib'])},"
                f" max {mib(rss['max_kib'])}; second half"
                + (" n/a" if slope is None else f" {slope / 1024:+.2f} MiB/min")
                + f" ({len(rss['samples'])} samples, every {rss['every_seconds']:g} s)",
            ]
        )
    facts.append(
        [
            "browser to dashboard",
            "HTTPS through Caddy (deploy/caddy/Caddyfile)"
            if settings.get("proxy")
            else "plain HTTP, direct",
        ]
    )
    facts.append(["pretend clock from", settings["clock_start"]])
    machine = result["machine"]
    facts.append(
        [
            "machine",
            f"{machine['cores']} cores ({machine['cpu_model']}), {machine['memory_gib']} GiB;"
            f" load average {machine['load_average'][0]:.2f} at the start,"
            f" {result['load_average_at_end'][0]:.2f} at the end",
        ]
    )
    git = result["git"]
    modified = len(git["modified_files"])
    facts.append(
        [
            "commit",
            git["commit"][:12] + (f" with {modified} modified files" if modified else ""),
        ]
    )
    lines.append(format_table(facts, [False, False]))
    lines.extend(f"!!! {problem}" for problem in result["problems"])
    return "\n".join(lines)


def problems_of(result: Mapping[str, Any]) -> list[str]:
    """What makes the run's result wrong, one line each: an emergency that never appeared, a
    page no longer live, other than one database listener."""
    problems = []
    latency = result["latency"]
    if latency["missing"]:
        shown = ", ".join(result["missing"][:5])
        more = "" if len(result["missing"]) <= 5 else ", ..."  # noqa: PLR2004 - a few
        problems.append(
            f"{latency['missing']} emergencies never appeared (page, at: {shown}{more})"
        )
    stale = [str(page["page"]) for page in result["pages"] if not page["live_at_end"]]
    if stale:
        problems.append(f"pages no longer live at the end: {', '.join(stale)}")
    listeners = result["listeners"]
    if not listeners["min"] == listeners["max"] == listeners["at_end"] == 1:
        problems.append(
            f"database listeners: {listeners['min']}-{listeners['max']}, {listeners['at_end']}"
            " at the end; the server must hold exactly one whatever the number of pages"
        )
    return problems


# The edge: traffic, the dashboard, the pages ---------------------------------------------


class Traffic(threading.Thread):
    """Background kiosk traffic at `rate` messages a second, each stamped with the pretend
    clock, plus emergencies on a schedule once `begin_emergencies` is called; one producer,
    one thread, so that every message goes out when it is stamped."""

    def __init__(
        self, kafka: KafkaSettings, topic: str, clock: PretendClock, rate: float, seed: int
    ) -> None:
        super().__init__(name="bench-live-traffic", daemon=True)
        self._producer = AckedProducer[int](kafka, topic, self._acked)
        self._clock = clock
        self._rate = rate
        self._feed = LiveFeed(seed, BACKGROUND_MIX)
        self._stop_event = threading.Event()
        self._schedule: list[float] = []  # monotonic instants, set by begin_emergencies
        self._schedule_lock = threading.Lock()
        self.background = 0
        self.acked = 0
        self.emergency_at: list[datetime] = []
        self.emergency_value: list[bytes] = []
        self.produced_s: list[float] = []  # time.time() just before each emergency's produce
        self.seconds = 0.0
        self.error: BaseException | None = None

    def begin_emergencies(self, offsets: Sequence[float]) -> None:
        start = time.monotonic()
        with self._schedule_lock:
            self._schedule = [start + offset for offset in offsets]

    @property
    def emergencies_done(self) -> bool:
        with self._schedule_lock:
            return bool(self._schedule) and len(self.produced_s) == len(self._schedule)

    def __enter__(self) -> Traffic:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop_event.set()
        self.join()

    def run(self) -> None:
        try:
            self._producer.connect(READY_TIMEOUT_S)
            started = time.monotonic()
            while not self._stop_event.is_set():
                due = int((time.monotonic() - started) * self._rate) + 1
                while self.background < due:
                    message = self._feed.message(self._clock.now())
                    self._producer.send(message.value, _BACKGROUND)
                    self.background += 1
                next_emergency = self._send_due_emergencies()
                next_due = min(started + self.background / self._rate, next_emergency)
                self._producer.poll(min(_TICK_S, max(0.0, next_due - time.monotonic())))
            self.seconds = time.monotonic() - started
            self._producer.finish(STOP_TIMEOUT_S)
        except BaseException as error:  # reported by the main thread, which watches us
            self.error = error

    def check(self) -> None:
        """Raise in the caller's thread what went wrong in this one."""
        if self.error is not None:
            raise BenchError(f"traffic: {self.error}")
        if self._producer.failed:
            raise BenchError(f"traffic: a delivery failed: {self._producer.first_failure}")

    def check_all_acked(self) -> None:
        """Once stopped: every message produced was acked, or the figures mean nothing."""
        self.check()
        sent = self.background + len(self.produced_s)
        if self.acked != sent:
            raise BenchError(f"traffic: {self.acked} of {sent} messages acked")

    def _send_due_emergencies(self) -> float:
        """Produce the emergencies that are due; when the next one is (monotonic)."""
        with self._schedule_lock:
            schedule = self._schedule
        while len(self.produced_s) < len(schedule):
            number = len(self.produced_s)
            if schedule[number] > time.monotonic():
                return schedule[number]
            at = self._clock.now()
            value = emergency_message(at, number)
            self.emergency_at.append(at)
            self.emergency_value.append(value)
            self.produced_s.append(time.time())
            self._producer.send(value, number)
        return math.inf

    def _acked(self, _label: int) -> None:
        self.acked += 1


@contextlib.contextmanager
def running_dashboard(
    database: DatabaseSettings, clock_start: datetime, scratch: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m dashboard --clock-start` on a free port over `database`, until the block
    ends: its URL and process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        PYTHON,
        "-m",
        "dashboard",
        "--port",
        str(port),
        "--env-file",
        NO_ENV_FILE,
        "--clock-start",
        clock_start.isoformat(),
    ]
    log = scratch / "dashboard.log"
    with log.open("w") as out:
        process = subprocess.Popen(  # noqa: S603 - our own command line
            command, cwd=ROOT, env=child_env(database.name), stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(f"{url}/healthz"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the dashboard did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield url, process
    finally:
        stop(process, STOP_TIMEOUT_S)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - the local dashboard
            return True
    except OSError:
        return False


def server_now(url: str, token: str) -> tuple[datetime, float]:
    """The dashboard server's clock from /api/meta (asked in the session of `token`), and the
    monotonic instant just after it answered: a clock anchored there runs at most one request
    behind the server's, never ahead of it (an emergency "from the future" might not be
    listed)."""
    request = urllib.request.Request(  # noqa: S310 - the local dashboard
        f"{url}/api/meta", headers={"Cookie": f"{COOKIE}={token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - local
        meta = json.load(answer)
    return datetime.fromisoformat(meta["now"]), time.monotonic()


def listeners(database: DatabaseSettings, name: str) -> int:
    """Sessions of the dashboard's LISTEN connection on database `name`."""
    rows = query(
        database,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND datname = %s",
        (LISTENER, name),
    )
    return int(rows[0][0])


class Screens:
    """`count` Safety pages in one headless chromium, each in a browser context of its own: a
    context keeps at most six connections to one server, and each page holds one open for
    its stream."""

    def __init__(self, count: int, home: Path | None = None) -> None:
        self._count = count
        self._home = home  # a HOME whose NSS database trusts the proxy's CA
        self._stack = contextlib.ExitStack()
        self.pages: list[Page] = []

    def __enter__(self) -> Screens:
        try:
            from playwright.sync_api import sync_playwright  # noqa: PLC0415 - the dev extra
        except ImportError:
            raise ConfigError(
                ["playwright is missing; install the dev extra: .venv/bin/pip install -e '.[dev]'"]
            ) from None
        if not Path(CHROMIUM).exists():
            raise ConfigError([f"{CHROMIUM} is missing: apt-get install chromium"])
        playwright = self._stack.enter_context(sync_playwright())
        env: dict[str, str | float | bool] | None = None
        if self._home is not None:
            env = {**os.environ, "HOME": str(self._home)}
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS, env=env
        )
        self._stack.callback(browser.close)
        for _ in range(self._count):
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_init_script(OBSERVER_SCRIPT)
            self.pages.append(context.new_page())
        return self

    def __exit__(self, *_exc: object) -> None:
        with contextlib.suppress(Exception):  # the driver may be gone already after Ctrl-C
            self._stack.close()

    def open(self, url: str, token: str) -> None:
        """Load the Safety page in every context, signed in with the session of `token`, and
        wait until each Now panel is live."""
        name = SECURE_COOKIE if url.startswith("https:") else COOKIE
        for page in self.pages:
            page.context.add_cookies([{"name": name, "value": token, "url": url}])
            page.goto(url, wait_until="commit")
        for number, page in enumerate(self.pages):
            try:
                page.wait_for_selector(
                    f'{NOW_PANEL}[data-state="live"]', timeout=PAGE_TIMEOUT_S * 1000
                )
            except Exception as error:
                raise BenchError(f"page {number}: the Now panel did not go live: {error}") from None

    def pump(self, seconds: float) -> None:
        """Let Playwright serve its events for a while (its calls run on this thread)."""
        self.pages[0].wait_for_timeout(seconds * 1000)

    def sightings(self) -> list[list[Sighting]]:
        return [
            [
                Sighting(str(seen["id"]), str(seen["at"]), float(seen["shown"]))
                for seen in page.evaluate("window.__lmnhNowSightings()")
            ]
            for page in self.pages
        ]

    def live(self) -> list[bool]:
        return [page.locator(f'{NOW_PANEL}[data-state="live"]').count() == 1 for page in self.pages]

    def drift_ms(self) -> float:
        """The largest drift of a page's observer clock from its wall clock."""
        return max(abs(float(page.evaluate(PAGE_DRIFT_SCRIPT))) for page in self.pages)


# The command ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Time emergencies from the kiosk's produce to the Safety page's Now panel "
        "in headless chromium, on the local stack (`python -m stack up`), with background "
        "kiosk traffic; --browsers and --soak-minutes keep many pages connected for a while "
        "and watch the dashboard server's memory and database listeners. Uses a topic, a "
        "database and a consumer group of its own, removed at the end.",
        epilog="Exit codes: 0 done, 1 an emergency never appeared, a check failed or the run "
        "failed, 2 usage, 3 broker unreachable, 5 database unreachable, 130 interrupted.",
    )
    parser.add_argument(
        "--rate",
        type=positive_number,
        default=500,
        help="background messages a second (default 500)",
    )
    parser.add_argument(
        "--emergencies", type=positive_int, default=240, help="emergencies timed (default 240)"
    )
    parser.add_argument(
        "--interval",
        type=positive_number,
        metavar="SECONDS",
        help="mean gap between emergencies, each within half of it either side (default 0.5;"
        " with --soak-minutes, spread over the soak)",
    )
    parser.add_argument(
        "--browsers", type=positive_int, default=1, help="pages connected at once (default 1)"
    )
    parser.add_argument(
        "--soak-minutes",
        type=positive_number,
        metavar="MINUTES",
        help="keep the pages connected while traffic runs for this long (default: until the"
        " last emergency)",
    )
    parser.add_argument(
        "--clock-start",
        type=_instant,
        metavar="ISO",
        help="the dashboard's pretend now (default: now while the museum is open for more than"
        " an hour, else the latest 11:00 London)",
    )
    parser.add_argument(
        "--proxy",
        action="store_true",
        help="the browser reaches the dashboard through Caddy (deploy/caddy/Caddyfile) over"
        " HTTPS, with a throwaway CA that it trusts; needs caddy, openssl and certutil",
    )
    parser.add_argument("--seed", type=int, default=1, help="traffic and schedule (default 1)")
    parser.add_argument(
        "--save", action="store_true", help="also write the figures as JSON to --results-dir"
    )
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS, help="where --save writes (bench/results)"
    )
    return parser.parse_args(argv)


def _instant(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text} has no UTC offset")
    return moment


def interval_s(args: argparse.Namespace) -> float:
    """The mean gap between emergencies: as asked, else spread over the soak, else 0.5 s."""
    if args.interval is not None:
        return float(args.interval)
    if args.soak_minutes is not None:
        return max(DEFAULT_INTERVAL_S, float(args.soak_minutes) * 60 / int(args.emergencies))
    return DEFAULT_INTERVAL_S


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # librdkafka logs every failed reconnect; what matters reaches the run as an error.
    logging.getLogger(client_log.name).setLevel(logging.CRITICAL)
    command = " ".join([PROGRAM, *(argv if argv is not None else sys.argv[1:])])
    return run(PROGRAM, partial(_bench, args, command), interrupted="everything removed")


def _bench(args: argparse.Namespace, command: str) -> int:
    if args.proxy and (missing := proxy_unavailable()):
        raise ConfigError([missing])
    settings = local_settings()
    wait_until_ready(settings.kafka, READY_TIMEOUT_S)
    connect(settings.database).close()
    started = datetime.now(UTC)
    soak_s = (args.soak_minutes or 0) * 60
    gap = interval_s(args)
    clock_start = args.clock_start or choose_clock_start(
        started, RUN_MARGIN + timedelta(seconds=max(soak_s, gap * args.emergencies))
    )
    progress = Progress()
    result: dict[str, Any] = {
        "command": command,
        "started_at": started.isoformat(timespec="seconds"),
        "git": git_state(),
        "machine": describe(settings.database),
        "settings": {
            "rate": args.rate,
            "emergencies": args.emergencies,
            "interval_s": round(gap, 3),
            "browsers": args.browsers,
            "soak_minutes": args.soak_minutes,
            "clock_start": clock_start.isoformat(timespec="seconds"),
            "seed": args.seed,
            "page": PAGE_PATH,
            "proxy": args.proxy,
        },
    }
    resources = Resources(settings, started.strftime("%Y%m%d%H%M%S"))
    tidy_on_interrupt()
    try:
        with tempfile.TemporaryDirectory(prefix="lmnh-bench-live-") as scratch:
            _run(LiveRun(args, resources, Path(scratch), clock_start, result, progress))
    finally:
        progress("removing the run's topic, database and consumer group")
        resources.close()

    result["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["problems"] = problems_of(result)
    print()
    print(render_live(result))
    if args.save:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        path = args.results_dir / f"live-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"\nwritten to {path}")
    return 1 if result["problems"] else 0


def tidy_on_interrupt() -> None:
    """The first Ctrl-C or SIGTERM stops the run; later ones are ignored, so that the tidy-up
    (processes, topic, database, consumer group) is not cut short. Each of its steps has a
    timeout."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # An interrupt inside a Playwright call leaves its driver's answer unread, which
        # asyncio would report as an error at exit; it is expected once interrupted.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        print(f"{PROGRAM}: interrupted; tidying up", file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


@dataclass(frozen=True, slots=True)
class LiveRun:
    """What every step of one run shares."""

    args: argparse.Namespace
    resources: Resources
    scratch: Path
    clock_start: datetime
    result: dict[str, Any]  # the figures, filled step by step
    progress: Progress


def _run(live: LiveRun) -> None:
    """The pipeline, the dashboard, the traffic and the pages, each stopped in reverse order
    whatever happens; then the pipeline's own figures."""
    args, resources, scratch, clock_start, progress = (
        live.args,
        live.resources,
        live.scratch,
        live.clock_start,
        live.progress,
    )
    settings = resources.settings
    topic = resources.topic("live")
    database = resources.database("live")
    progress(f"kafka_pipeline.py --follow on {topic}; the dashboard from {clock_start.isoformat()}")
    command = pipeline_command(topic, resources.group("live"), scratch / "invalid.log", "--follow")
    pipeline, pipeline_started = start_pipeline(command, database, scratch, "pipeline")
    monitor = OffsetMonitor(database, topic)
    try:
        _wait_for(lambda: " assigned " in (scratch / "pipeline.err").read_text(), "joined")
        monitor.start()
        with (
            running_dashboard(database, clock_start, scratch) as (url, dashboard),
            _front(url, scratch, args.proxy) as (page_url, home),
        ):
            token = session_without_sign_in(database, ["security"], "Benchmark", "bench")
            pretend, anchor = server_now(url, token)
            clock = PretendClock(pretend, anchor)
            with Traffic(settings.kafka, topic, clock, args.rate, args.seed) as traffic:
                progress(f"{thousands(args.rate)} msg/s of background traffic; opening the pages")
                with Screens(args.browsers, home) as screens:
                    screens.open(page_url + PAGE_PATH, token)
                    _measure(live, database, screens, traffic, dashboard)
        traffic.check_all_acked()
        progress(
            f"{thousands(traffic.acked)} messages acked; waiting for the pipeline to store them"
        )
        _wait_for(
            lambda: monitor.total() >= traffic.acked or monitor.error is not None,
            "caught up",
            CATCH_UP_TIMEOUT_S,
        )
    finally:
        if monitor.is_alive():
            monitor.stop()
        stop(pipeline, STOP_TIMEOUT_S)
    ended = finish_pipeline(pipeline, pipeline_started, scratch, "pipeline")
    if ended.exit_code != 0:
        raise BenchError(f"the pipeline exited {ended.exit_code}: {ended.stderr[-2000:]}")
    if monitor.error is not None:
        raise BenchError(f"the offset monitor failed: {monitor.error}")
    live.result["traffic"] = {
        "background": traffic.background,
        "emergencies": len(traffic.produced_s),
        "acked": traffic.acked,
        "seconds": round(traffic.seconds, 1),
        "per_second": round(traffic.background / traffic.seconds, 1),
    }
    progress("reading the topic back for the pipeline's own freshness")
    _pipeline_figures(resources, topic, monitor, traffic, live.result)


@contextlib.contextmanager
def _front(url: str, scratch: Path, proxy: bool) -> Iterator[tuple[str, Path | None]]:
    """What the pages open: the dashboard itself, or Caddy in front of it over HTTPS (with
    the home folder whose NSS database trusts the run's CA)."""
    if not proxy:
        yield url, None
        return
    certificates = throwaway_certificates(scratch / "tls")
    home = browser_home(scratch / "browser-home", certificates)
    with running_proxy(url.removeprefix("http://"), certificates, scratch / "caddy") as front:
        yield front.url, home


def _measure(
    live: LiveRun,
    database: DatabaseSettings,
    screens: Screens,
    traffic: Traffic,
    dashboard: subprocess.Popen[bytes],
) -> None:
    """Produce the emergencies, keep traffic and pages going for the soak, sample the server
    and the database on the way, then collect what every page saw."""
    args, result, progress = live.args, live.result, live.progress
    soak_s = (args.soak_minutes or 0) * 60
    offsets = emergency_offsets(args.emergencies, interval_s(args), args.seed)
    progress(
        f"{args.browsers} page(s) live; {WARM_UP_S:g} s of warm-up, then {args.emergencies}"
        f" emergencies over {offsets[-1]:.0f} s"
        + (f", soaking {soak_s / 60:g} min" if soak_s else "")
    )
    screens.pump(WARM_UP_S)
    began = time.monotonic()
    traffic.begin_emergencies(offsets)
    rss: list[tuple[float, int]] = []
    seen_listeners: list[int] = []
    next_sample = began
    last_report = began
    while not (traffic.emergencies_done and time.monotonic() - began >= soak_s):
        traffic.check()
        if dashboard.poll() is not None:
            raise BenchError(f"the dashboard exited {dashboard.returncode}")
        if time.monotonic() >= next_sample:
            rss.append((time.monotonic() - began, _rss_kib(dashboard.pid)))
            seen_listeners.append(listeners(database, database.name))
            next_sample += RSS_SAMPLE_S
        if time.monotonic() - last_report >= 60:  # noqa: PLR2004 - a line a minute
            last_report = time.monotonic()
            progress(f"  {len(traffic.produced_s)} emergencies produced, RSS {mib(rss[-1][1])}")
        screens.pump(PUMP_S)

    produced = dict(zip(traffic.emergency_at, traffic.produced_s, strict=True))
    deadline = time.monotonic() + APPEAR_TIMEOUT_S
    while True:
        per_page = [match_sightings(produced, seen) for seen in screens.sightings()]
        if all(not missing for _, missing in per_page) or time.monotonic() > deadline:
            break
        screens.pump(1.0)
    rss.append((time.monotonic() - began, _rss_kib(dashboard.pid)))
    at_end = listeners(database, database.name)
    seen_listeners.append(at_end)
    pages_live = screens.live()
    result["page_clock_drift_ms"] = round(screens.drift_ms(), 1)
    result.update(latency_results(per_page, pages_live, traffic.emergency_at))
    result["listeners"] = {
        "at_end": at_end,
        "min": min(seen_listeners),
        "max": max(seen_listeners),
        "samples": len(seen_listeners),
    }
    result["dashboard_rss"] = rss_figures(rss)


def _pipeline_figures(
    resources: Resources,
    topic: str,
    monitor: OffsetMonitor,
    traffic: Traffic,
    result: dict[str, Any],
) -> None:
    """The pipeline's freshness over every message (Kafka CreateTime to the commit of its
    row), and each emergency's latency split at the commit of its row."""
    coordinates: dict[bytes, tuple[int, int]] = {}
    produced = []
    wanted = set(traffic.emergency_value)
    for message in read_topic(resources.settings.kafka, topic, resources.group("read")):
        produced.append((message.partition, message.offset, message.timestamp_ms or 0))
        if message.value in wanted:
            coordinates[message.value] = (message.partition, message.offset)
    delays = commit_delays(produced, monitor.seen)
    result["freshness"] = {
        "messages": len(delays),
        "p50_ms": round(percentile(delays, 0.50), 1),
        "p99_ms": round(percentile(delays, 0.99), 1),
        "max_ms": round(max(delays), 1),
        "resolution_ms": POLL_INTERVAL_S * 1000,
    }
    emergencies = [
        (*coordinates[value], round(produced_s * 1000))
        for value, produced_s in zip(traffic.emergency_value, traffic.produced_s, strict=True)
    ]
    committed = commit_delays(emergencies, monitor.seen)
    shown = [
        emergency["first_ms"] - delay
        for emergency, delay in zip(result["by_emergency"], committed, strict=True)
        if emergency["first_ms"] is not None
    ]
    if shown:
        result["split"] = {
            "committed": latency_figures(committed, 0),
            "shown": latency_figures(shown, 0),
            "how": "the commit is the first 20 ms poll of kafka_offset past the emergency's"
            " offset; shown is on the first page to show the emergency",
        }


def _rss_kib(pid: int) -> int:
    return vm_rss_kib(Path(f"/proc/{pid}/status").read_text(encoding="utf-8"))


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"the pipeline was not {what} within {timeout_s:g} s")
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())

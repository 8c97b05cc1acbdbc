"""Prometheus metrics: the pipeline's (counted per batch, never per message) with its `/health`,
served on a port of their own, and a web app's request metrics. The only module that imports
prometheus_client.

Each instance has a registry of its own rather than the library's global one, so that tests and
two apps in one process never share counts.
"""

from __future__ import annotations

import collections
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import MetricsHandler, choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from lmnh.errors import ConfigError
from lmnh.events import Reason, Rejection
from lmnh.health import NOT_STARTED, GroupState, Health, LoadState, judge
from lmnh.museum import in_opening_hours

if TYPE_CHECKING:
    from lmnh.store import CopyBatch, WriteResult

log = logging.getLogger(__name__)

PREFIX = "lmnh_pipeline"
# Messages per batch: the default --batch-size is 10000; a quiet feed stores batches of a few.
BATCH_SIZE_BUCKETS = (1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000)
# A batch's transaction normally takes well under a second; retries stretch it to minutes.
STORE_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
REQUEST_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_SERVER_POLL_S = 0.5  # how soon the server thread notices it is asked to stop
# The `exhibition` label of rejected messages that named no known exhibition: whatever a message
# says, the label takes the known exhibitions' public ids and this, no more.
UNKNOWN_SITE = "unknown"
SITE_OUTCOMES = ("stored", "rejected")
_NAMED_FROM_END = 4  # a rejected_message COPY line: ..., named_exhibition, topic, partition, offset
_COPY_NULL = b"\\N"


@dataclass(frozen=True, slots=True)
class SiteCounts:
    """A batch's messages by exhibition public id (`UNKNOWN_SITE` for rejects naming none)."""

    stored: Mapping[str, int]  # ratings and requests
    rejected: Mapping[str, int]


def site_counts(batch: CopyBatch) -> SiteCounts:
    """Count a batch's messages by the exhibition they came from: a fact's own, a reject's
    named exhibition, read off the line that stores it in `rejected_message` (its
    `named_exhibition` column, the fourth from the end of the COPY line, after which come only
    the topic, partition and offset, which hold no tab). Working each reject's site out again
    from its raw bytes would take six times as long: the pipeline's main thread pays for this."""
    stored = collections.Counter(
        [o.exhibition_public_id for o in batch.outcomes if not isinstance(o, Rejection)]
    )
    rejected = collections.Counter(
        [line.rsplit(b"\t", _NAMED_FROM_END)[1] for line in batch.data[2].split(b"\n")[:-1]]
    )
    named = {
        UNKNOWN_SITE if site == _COPY_NULL else site.decode("ascii"): count
        for site, count in rejected.items()
    }
    return SiteCounts(stored, named)


@dataclass(frozen=True, slots=True)
class _Watched:
    """Where the state-like metrics and `/health` come from, read when they are asked for."""

    group: Callable[[], GroupState]
    load: Callable[[], LoadState]
    topic: str
    stall_s: float


class PipelineMetrics:
    """What kafka_pipeline.py counts as it loads (told once per batch) and what it is (read at
    each scrape, so that an idle or stuck pipeline still reports its state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        registry = self.registry
        self._consumed = Counter(
            f"{PREFIX}_messages_consumed",
            "Messages taken from Kafka into a batch (stored, rejected, already stored or in"
            " flight).",
            registry=registry,
        )
        stored = Counter(
            f"{PREFIX}_messages_stored",
            "Valid interactions stored, by kind (rating or request).",
            ["kind"],
            registry=registry,
        )
        self._ratings, self._requests = stored.labels("rating"), stored.labels("request")
        rejected = Counter(
            f"{PREFIX}_messages_rejected",
            "Invalid messages stored in rejected_message, by reason code (unstorable included).",
            ["reason"],
            registry=registry,
        )
        # Every code exists from the start, at 0: a rate over a code seen for the first time
        # then counts its first occurrence.
        self._rejected = {reason.value: rejected.labels(reason.value) for reason in Reason}
        self._already_stored = Counter(
            f"{PREFIX}_messages_already_stored",
            "Messages read again (after a crash or a rebalance) and skipped: stored before.",
            registry=registry,
        )
        self._set_aside = Counter(
            f"{PREFIX}_messages_set_aside",
            "Messages PostgreSQL refused as they were, stored raw as `unstorable` rejections.",
            registry=registry,
        )
        self._retries = Counter(
            f"{PREFIX}_database_retries",
            "Transient database failures (connection lost, timeouts, deadlocks...) retried.",
            registry=registry,
        )
        self._batch_size = Histogram(
            f"{PREFIX}_batch_size_messages",
            "Messages per stored batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self._store_seconds = Histogram(
            f"{PREFIX}_store_duration_seconds",
            "A batch's write, from its hand-over to the writer to its database commit, retries"
            " included.",
            buckets=STORE_SECONDS_BUCKETS,
            registry=registry,
        )
        self._site_messages = Counter(
            f"{PREFIX}_site_messages",
            "Messages stored as facts or rejected, by the exhibition they came from (a reject's"
            f" named exhibition, {UNKNOWN_SITE!r} when it named no known one) and outcome.",
            ["exhibition", "outcome"],
            registry=registry,
        )
        self._sites: dict[tuple[str, str], Counter] = {}
        self._sites_known: frozenset[str] = frozenset()
        self._watched: _Watched | None = None
        registry.register(self)

    def watch(
        self,
        group: Callable[[], GroupState],
        load: Callable[[], LoadState],
        topic: str,
        stall_s: float,
    ) -> None:
        """Report the consumer's and the loop's state from now on (before: not started)."""
        self._watched = _Watched(group, load, topic, stall_s)

    def consumed(self, count: int) -> None:
        self._consumed.inc(count)

    def stored(self, result: WriteResult, size: int) -> None:
        """A batch of `size` messages is committed, in the database and then to Kafka."""
        self._ratings.inc(result.ratings)
        self._requests.inc(result.requests)
        for code, count in result.rejected.items():
            self._rejected[code].inc(count)
        if result.already_stored:
            self._already_stored.inc(result.already_stored)
        if result.set_aside:
            self._set_aside.inc(len(result.set_aside))
        self._batch_size.observe(size)

    def stored_by_site(self, batch: CopyBatch) -> None:
        """A committed batch's messages by exhibition (`site_counts`). Every exhibition of the
        reference data, and `UNKNOWN_SITE`, is exported from 0 on: a kiosk that sends nothing
        after a restart still has a series, whose increase is 0."""
        known = batch.reference.exhibition_start.keys()
        if known != self._sites_known:
            for exhibition in (*sorted(known), UNKNOWN_SITE):
                for outcome in SITE_OUTCOMES:
                    if (exhibition, outcome) not in self._sites:
                        child = self._site_messages.labels(exhibition, outcome)
                        self._sites[exhibition, outcome] = child
            self._sites_known = frozenset(known)
        counts = site_counts(batch)
        for outcome, by_site in (("stored", counts.stored), ("rejected", counts.rejected)):
            for exhibition, count in by_site.items():
                site = exhibition if (exhibition, outcome) in self._sites else UNKNOWN_SITE
                self._sites[site, outcome].inc(count)

    def store_took(self, seconds: float) -> None:
        self._store_seconds.observe(seconds)

    def retried(self) -> None:
        self._retries.inc()

    def health(self) -> Health:
        """The rule of `lmnh.health`, applied now."""
        return self._judge(*self._state())

    def collect(self) -> Iterator[Metric]:
        """The gauges, computed at each scrape from the consumer's and the loop's state."""
        group, load = self._state()
        topic = self._watched.topic if self._watched else ""
        yield GaugeMetricFamily(
            f"{PREFIX}_consumer_assigned",
            "1 while the consumer holds an assignment from its group (possibly empty), 0 while"
            " it joins or rebalances.",
            value=int(group.member),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_assigned_partitions",
            "Partitions the consumer holds.",
            value=len(group.partitions),
        )
        lag = GaugeMetricFamily(
            f"{PREFIX}_consumer_lag_messages",
            "Per assigned partition: its high watermark minus the next offset to load.",
            labels=["topic", "partition"],
        )
        for partition, behind in sorted(group.lag.items()):
            lag.add_metric([topic, str(partition)], max(0, behind))
        yield lag
        if load.last_commit_unix is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_last_commit_timestamp_seconds",
                "When the last batch was committed to the database (Unix time); absent before"
                " the first.",
                value=load.last_commit_unix,
            )
        health = self._judge(group, load)
        yield GaugeMetricFamily(
            f"{PREFIX}_healthy",
            "1 when /health answers 200 (in its group and storing), else 0.",
            value=int(health.healthy),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_unstored_wait_seconds",
            "How long messages have waited to be stored with no batch committed meanwhile (a"
            " batch in flight, lag, or a partition waiting for its start offset), 0 while none"
            " waits: /health says stalled once it reaches --health-stall-seconds.",
            value=health.unstored_wait_s or 0.0,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_museum_open",
            "1 while the museum is open (08:45-18:15 Europe/London, lmnh.museum), else 0: the"
            " alert rules' clock, since Prometheus keeps no time zone.",
            value=int(in_opening_hours(datetime.now(UTC))),
        )

    def _state(self) -> tuple[GroupState, LoadState]:
        watched = self._watched
        if watched is None:
            return NOT_STARTED, LoadState(None, None)
        return watched.group(), watched.load()

    def _judge(self, group: GroupState, load: LoadState) -> Health:
        stall_s = self._watched.stall_s if self._watched else 0.0
        return judge(group, load, time.monotonic(), stall_s, time.time())


class MetricsServer:
    """`/metrics` and `/health` over HTTP, on a daemon thread, until `stop`.

    `/health` answers JSON: 200 when the pipeline is healthy, else 503 (see `lmnh.health`).
    """

    def __init__(self, metrics: PipelineMetrics, host: str, port: int) -> None:
        handler = type("Handler", (_Handler,), {"registry": metrics.registry, "metrics": metrics})
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        try:
            self._server = server_class((host, port), handler)
        except OSError as error:
            raise ConfigError(
                [
                    f"cannot serve metrics on {host}:{port} ({error.strerror}): choose another"
                    " --metrics-port or --metrics-host"
                ]
            ) from None
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _SERVER_POLL_S},
            name="lmnh-metrics",
            daemon=True,
        )
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics, health on /health", host, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(MetricsHandler):
    metrics: PipelineMetrics

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            super().do_GET()
        elif path == "/health":
            health = self.metrics.health()
            self._answer(200 if health.healthy else 503, health.body)
        else:
            self._answer(404, {"error": f"no {path}: try /metrics or /health"})

    def _answer(self, status: int, body: Mapping[str, object]) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)


class RequestMetrics:
    """A web app's requests, by route template (never the raw path or its query), method and
    status, and their latency: labels whose values are few, whatever clients send."""

    METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

    def __init__(self, prefix: str) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            f"{prefix}_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._seconds = Histogram(
            f"{prefix}_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method.",
            ["route", "method"],
            buckets=REQUEST_SECONDS_BUCKETS,
            registry=self.registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """`route` is a template such as /api/charts/{name}, or "unmatched"."""
        method = method if method in self.METHODS else "other"
        self._requests.labels(route, method, str(status)).inc()
        self._seconds.labels(route, method).observe(seconds)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The metrics in the format the scraper asks for (`Accept`), and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

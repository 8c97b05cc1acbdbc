"""Re-validate stored rejects after a rule or reference change, and move what now passes into
its fact table, exactly once.

A kiosk at a new exhibition sends for a day before its row is added; a rule is found too strict.
The raw bytes of every reject are kept, so they can be judged again: each reject chosen (by
reason, time received and site) is validated against today's rules and reference data, as if
it were received again at the moment it was (`received_at` is the validator's "now"). In one
transaction per batch, what now passes is inserted into `rating_interaction` or
`request_interaction` with its Kafka coordinates and its `rejected_message` row is deleted; what
still fails keeps its row, with its reason brought up to date. The rejects a batch takes are
locked (`FOR UPDATE SKIP LOCKED`), so two runs, or a run and the pipeline, never handle one
twice, and a run killed half way leaves whole batches behind it; the fact tables' unique
constraint on the coordinates is the last guard.

Exit codes are the pipeline's (`kafka_pipeline.py`): 0 done (also after a requested stop), 1
unexpected error, 2 usage, 5 database unreachable, 6 schema missing, 8 database refused the
write (a missing privilege, a reject whose message is already stored as a fact), 130 stopped by
a second signal (the batch in hand rolled back).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from lmnh import backoff
from lmnh.cli import load_settings, positive_int, run, stop_on_signals
from lmnh.config import DatabaseSettings
from lmnh.database import classify, connect
from lmnh.errors import ExitCode, FatalError, PermanentError, TransientError
from lmnh.events import KafkaMessage, Reason, Rejection, storable_text
from lmnh.museum import LONDON, Reference, public_id_for_site
from lmnh.store import COPY_STATEMENTS, Store, classified_error, copy_row, unstorable
from lmnh.validation import named_exhibition, validate

log = logging.getLogger("lmnh.reprocess")

PROGRAM = "lmnh-reprocess"
DEFAULT_BATCH_SIZE = 1000
# A batch that meets a transient failure (a restart, a deadlock) is retried for this long.
_RETRY_FOR_S = 60.0
_STARTUP_TIMEOUT_S = 15.0
_KIOSK_SITE = re.compile(r"[1-9][0-9]{0,5}|0")  # as a kiosk writes site N: no sign, no zeros
_SELECT = (
    "SELECT rejected_message_id, raw, reason_code, reason, named_exhibition, received_at,"
    " kafka_topic, kafka_partition, kafka_offset FROM rejected_message"
    " WHERE rejected_message_id > %(after)s"
    " AND (%(reasons)s::text[] IS NULL OR reason_code = ANY (%(reasons)s::text[]))"
    " AND (%(since)s::timestamptz IS NULL OR received_at >= %(since)s::timestamptz)"
    " AND (%(until)s::timestamptz IS NULL OR received_at < %(until)s::timestamptz)"
    " ORDER BY rejected_message_id LIMIT %(limit)s"
)
_DELETE = "DELETE FROM rejected_message WHERE rejected_message_id = ANY (%s::bigint[])"
_UPDATE = (
    "UPDATE rejected_message AS r SET reason_code = v.reason_code, reason = v.reason,"
    " named_exhibition = v.named_exhibition"
    " FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[])"
    " AS v (rejected_message_id, reason_code, reason, named_exhibition)"
    " WHERE r.rejected_message_id = v.rejected_message_id"
)
_COORDINATES_TAKEN = "23505"


# --- choosing rejects ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    """Which rejects to judge again: by reason code (any, when empty), by the time they were
    received (`since` inclusive, `until` exclusive) and by site (any, when empty)."""

    reasons: frozenset[Reason] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    sites: frozenset[str] = frozenset()

    def takes_site(self, raw: bytes | None, named: str | None) -> bool:
        """Whether a reject's site is one of those asked for, by any of its names."""
        return not self.sites or not self.sites.isdisjoint(site_names(raw, named))


def site_names(raw: bytes | None, named: str | None) -> frozenset[str]:
    """What a reject's site may be called: the known exhibition it named when it was stored
    (`named_exhibition`), the `site` text of its JSON, and the public id that text stands for
    ("6" is EXH_06), known or not: a new exhibition's rejects name no known one. Never raises."""
    site = _site_text(raw)
    return frozenset(({named} if named else set()) | (_names(site) if site is not None else set()))


def wanted_sites(values: Iterable[str]) -> frozenset[str]:
    """The names `--site` values match: each as given, and a site number's public id too."""
    return frozenset().union(*map(_names, values))


def _names(site: str) -> set[str]:
    """A site as given, and the public id it stands for when it is a kiosk's site number."""
    return {site, public_id_for_site(site)} if _KIOSK_SITE.fullmatch(site) else {site}


def _site_text(raw: bytes | None) -> str | None:
    if not raw:
        return None
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    site = parsed.get("site") if isinstance(parsed, dict) else None
    return site if isinstance(site, str) else None


def instant(text: str) -> datetime:
    """argparse type: an ISO 8601 date or date-time; without an offset, on the museum's clock
    (London), as the reasons and the dashboards read time."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text} is not a date or date-time like 2026-11-20 or 2026-11-20T09:00:00+00:00"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=LONDON)


# --- judging one reject --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredReject:
    """A `rejected_message` row, as far as judging it again needs."""

    rejected_message_id: int
    message: KafkaMessage  # its coordinates and raw bytes
    reason_code: str
    reason: str
    named_exhibition: str | None
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Move:
    """The reject now passes: its fact row (a COPY line for `COPY_STATEMENTS[table]`)."""

    table: int  # 0 ratings, 1 requests
    line: str
    site: str  # the exhibition it goes to


@dataclass(frozen=True, slots=True)
class Keep:
    """The reject still fails: its reason as judged today, and whether its row must change."""

    reason_code: str
    reason: str
    named_exhibition: str | None
    changed: bool


def judge(reject: StoredReject, reference: Reference) -> Move | Keep:
    """Validate a reject again against `reference`, as of the moment it was received: a time
    rule (a message from the future, one before its exhibition opened) judges it as it would
    have been judged had the reference been right then. Pure."""
    message = reject.message
    outcome = validate(message.value, reference, reject.received_at)
    if not isinstance(outcome, Rejection):
        try:
            table, line = copy_row(message, outcome, reference, reject.received_at.isoformat())
        except Exception as error:  # a row that cannot be built stays a reject
            outcome = unstorable(outcome, classify(error))
        else:
            return Move(table, line, outcome.exhibition_public_id)
    code, reason = outcome.code.value, storable_text(outcome.detail)
    named = named_exhibition(message.value, reference)
    changed = (code, reason, named) != (reject.reason_code, reject.reason, reject.named_exhibition)
    return Keep(code, reason, named, changed)


# --- what a run did ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tally:
    """What a run moved (by the reason it had and the exhibition it went to), what it kept (by
    today's reason), and how many kept rows did not change at all."""

    moved: Counter[tuple[str, str]] = field(default_factory=Counter)
    ratings: int = 0
    requests: int = 0
    kept: Counter[str] = field(default_factory=Counter)
    unchanged: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.moved + other.moved,
            self.ratings + other.ratings,
            self.requests + other.requests,
            self.kept + other.kept,
            self.unchanged + other.unchanged,
        )

    def summary(self, *, dry_run: bool) -> str:
        """One line: moved (ratings, requests), still rejected by reason, unchanged."""
        moved = sum(self.moved.values())
        kept = ", ".join(f"{code} {n}" for code, n in sorted(self.kept.items()))
        return (
            f"{'would move' if dry_run else 'moved'} {moved} (ratings {self.ratings},"
            f" requests {self.requests}); still rejected {sum(self.kept.values())}"
            f"{f' ({kept})' if kept else ''}; unchanged {self.unchanged}"
        )

    def moves(self) -> list[str]:
        """What moved, a line per reason it had and exhibition it went to."""
        return [f"  {n:>8}  {code} -> {site}" for (code, site), n in sorted(self.moved.items())]


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """A batch judged: the fact rows to insert, the rejects to delete and those to update."""

    lines: tuple[list[str], list[str]]  # COPY text, ratings then requests
    retired: list[int]  # rejected_message ids moved
    updates: list[tuple[int, Keep]]
    tally: Tally


def plan(rejects: Sequence[StoredReject], reference: Reference, selection: Selection) -> BatchPlan:
    """Judge the rejects of a batch that `selection` takes (its site; the database chose the
    rest). Pure."""
    lines: tuple[list[str], list[str]] = ([], [])
    retired: list[int] = []
    updates: list[tuple[int, Keep]] = []
    moved: Counter[tuple[str, str]] = Counter()
    kept: Counter[str] = Counter()
    unchanged = 0
    for reject in rejects:
        if not selection.takes_site(reject.message.value, reject.named_exhibition):
            continue
        decision = judge(reject, reference)
        if isinstance(decision, Move):
            lines[decision.table].append(decision.line)
            retired.append(reject.rejected_message_id)
            moved[(reject.reason_code, decision.site)] += 1
        else:
            kept[decision.reason_code] += 1
            if decision.changed:
                updates.append((reject.rejected_message_id, decision))
            else:
                unchanged += 1
    tally = Tally(moved, len(lines[0]), len(lines[1]), kept, unchanged)
    return BatchPlan(lines, retired, updates, tally)


# --- the database --------------------------------------------------------------------------


class _Cursor(Protocol):
    """The cursor calls this module makes: a seam that keeps the driver in `lmnh.database`."""

    def execute(self, query: str, parameters: Any = None, /) -> None: ...
    def fetchall(self) -> list[tuple[Any, ...]]: ...
    def copy_expert(self, sql: str, file: io.BytesIO, /) -> None: ...


@contextmanager
def _transaction(db: DatabaseSettings, *, read_only: bool = False) -> Iterator[_Cursor]:
    """One transaction on a connection of its own, committed when the block ends, rolled back
    on an error (which comes out as the project's error for what to do about it). A connection
    per batch: after any failure the next batch starts clean."""
    conn = connect(db, application_name=PROGRAM)
    try:
        if read_only:
            conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn, conn.cursor() as cur:
            yield cur
    except Exception as error:
        if not hasattr(error, "pgcode"):  # not the database's: a bug keeps its traceback
            raise
        classified = _refused(error) or classified_error(conn, error)
        if isinstance(classified, PermanentError):  # the data refused: not worth retrying
            classified = FatalError(
                f"the database refused a batch ({classified}): nothing of it was changed",
                ExitCode.DATABASE_REFUSED,
            )
        raise classified from error
    finally:
        conn.close()


def _refused(error: Exception) -> FatalError | None:
    """A reject whose message is already stored as a fact: two rows for one message, which
    this tool will not resolve by guessing."""
    diag = getattr(error, "diag", None)
    constraint = getattr(diag, "constraint_name", None) or ""
    if getattr(error, "pgcode", None) == _COORDINATES_TAKEN and constraint.endswith(
        "_kafka_coordinates"
    ):
        return FatalError(
            f"a reject's message is already stored as a fact ({constraint}): nothing of this"
            " batch was changed; find the pair by its coordinates and delete the wrong one",
            ExitCode.DATABASE_REFUSED,
        )
    return None


def _rejects(
    cur: _Cursor, selection: Selection, after: int, limit: int, *, lock: bool
) -> list[StoredReject]:
    """The next `limit` rejects the database side of `selection` takes, after id `after`;
    locked, skipping any another transaction holds, when `lock`."""
    cur.execute(
        _SELECT + (" FOR UPDATE SKIP LOCKED" if lock else ""),
        {
            "after": after,
            "reasons": sorted(r.value for r in selection.reasons) or None,
            "since": selection.since,
            "until": selection.until,
            "limit": limit,
        },
    )
    return [
        StoredReject(
            row_id,
            KafkaMessage(topic, partition, offset, None if raw is None else bytes(raw), None),
            code,
            reason,
            named,
            received_at,
        )
        for row_id, raw, code, reason, named, received_at, topic, partition, offset in (
            cur.fetchall()
        )
    ]


def _apply(cur: _Cursor, batch: BatchPlan) -> None:
    """Insert the facts, retire their rejects, update the rest: one transaction's work."""
    for statement, lines in zip(COPY_STATEMENTS, batch.lines, strict=False):
        if lines:
            cur.copy_expert(statement, io.BytesIO("".join(lines).encode("utf-8")))
    if batch.retired:
        cur.execute(_DELETE, (batch.retired,))
    if batch.updates:
        cur.execute(
            _UPDATE,
            (
                [row_id for row_id, _ in batch.updates],
                [keep.reason_code for _, keep in batch.updates],
                [keep.reason for _, keep in batch.updates],
                [keep.named_exhibition for _, keep in batch.updates],
            ),
        )


@dataclass(frozen=True, slots=True)
class Reprocessor:
    """Works through the chosen rejects, a batch (one transaction) at a time."""

    db: DatabaseSettings
    reference: Reference
    selection: Selection
    batch_size: int

    def dry_run(self, stop: threading.Event) -> Tally:
        """What a run would do, read in one read-only snapshot; nothing is locked or changed."""
        tally, after = Tally(), 0
        with _transaction(self.db, read_only=True) as cur:
            while not stop.is_set():
                rejects = _rejects(cur, self.selection, after, self.batch_size, lock=False)
                tally += plan(rejects, self.reference, self.selection).tally
                if len(rejects) < self.batch_size:
                    break
                after = rejects[-1].rejected_message_id
        return tally

    def run(self, stop: threading.Event) -> Tally:
        """Move what now passes, a committed batch at a time, until the chosen rejects are
        all judged or `stop` is set (the batch in hand is finished first)."""
        tally, after = Tally(), 0
        while not stop.is_set():
            taken, after, done = self._batch_retried(after)
            tally += done
            if taken < self.batch_size:
                break
        return tally

    def _batch_retried(self, after: int) -> tuple[int, int, Tally]:
        deadline = time.monotonic() + _RETRY_FOR_S
        for delay in backoff.delays(0.5, 5.0):
            try:
                return self._batch(after)
            except TransientError as error:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("%s; retrying the batch in %.1f s", error, delay)
                time.sleep(delay)
        raise AssertionError("unreachable: backoff.delays never ends")  # pragma: no cover

    def _batch(self, after: int) -> tuple[int, int, Tally]:
        """One transaction: take the next batch of rejects after id `after`, judge them, write
        the outcome. Returns how many it took (asked for by site or not), the last one's id and
        what it did."""
        with _transaction(self.db) as cur:
            rejects = _rejects(cur, self.selection, after, self.batch_size, lock=True)
            batch = plan(rejects, self.reference, self.selection)
            _apply(cur, batch)
        if not rejects:
            return 0, after, batch.tally
        last = rejects[-1].rejected_message_id
        log.info(
            "rejects through id %d: moved %d, still rejected %d",
            last,
            sum(batch.tally.moved.values()),
            sum(batch.tally.kept.values()),
        )
        return len(rejects), last, batch.tally


# --- the command ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Judge stored rejects again against today's rules and reference data (for "
        "example after adding an exhibition whose kiosk was already sending) and move what now "
        "passes into its fact table, exactly once, with its Kafka coordinates. Each message is "
        "judged as of the time it was received. What still fails keeps its row, with its reason "
        "brought up to date. Safe to run twice, alongside the pipeline, or again after a kill.",
        epilog="Exit codes: 0 done, 1 unexpected error, 2 usage or configuration, 5 database "
        "unreachable, 6 schema missing, 8 database refused the write, 130 a second signal "
        "abandoned the batch in hand.",
    )
    parser.add_argument(
        "--reason",
        action="append",
        choices=[reason.value for reason in Reason],
        metavar="CODE",
        help="only rejects stored with this reason code (repeatable; default: every reason)",
    )
    parser.add_argument(
        "--since",
        type=instant,
        help="only rejects received at or after this date or date-time (London time unless it "
        "has an offset)",
    )
    parser.add_argument(
        "--until", type=instant, help="only rejects received before this date or date-time"
    )
    parser.add_argument(
        "--site",
        action="append",
        metavar="SITE",
        help="only rejects from this site: a public id (EXH_06) or a kiosk's site text (6); "
        "repeatable",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would move, by reason and exhibition, and change nothing",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        help=f"rejects per transaction (default: {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument("--env-file", type=Path, help="read settings from this file, not .env")
    args = parser.parse_args(argv)
    if args.since is not None and args.until is not None and args.since >= args.until:
        parser.error("--since must be before --until")
    return args


def selection_of(args: argparse.Namespace) -> Selection:
    return Selection(
        reasons=frozenset(Reason(code) for code in args.reason or ()),
        since=args.since,
        until=args.until,
        sites=wanted_sites(args.site or ()),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run(
        PROGRAM,
        partial(_reprocess, args),
        interrupted="the batch in hand was rolled back; what earlier batches moved stays moved,"
        " and the next run takes up the rest",
    )


def _reprocess(args: argparse.Namespace) -> int:
    settings = load_settings(args.env_file)
    stop = threading.Event()
    stop_on_signals(stop, log, "stopping after the batch in hand")
    store = Store(settings.database)
    try:
        store.check(_STARTUP_TIMEOUT_S)
        reference = store.load_reference()  # today's, once: every batch is judged alike
    finally:
        store.close()
    reprocessor = Reprocessor(settings.database, reference, selection_of(args), args.batch_size)
    tally = reprocessor.dry_run(stop) if args.dry_run else reprocessor.run(stop)
    for line in _report(tally, dry_run=args.dry_run, stopped=stop.is_set()):
        print(line)
    return ExitCode.OK


def _report(tally: Tally, *, dry_run: bool, stopped: bool) -> Iterator[str]:
    if dry_run and tally.moved:
        yield "would move, by reason and exhibition:"
        yield from tally.moves()
    yield tally.summary(dry_run=dry_run) + ("; stopped early" if stopped else "")


if __name__ == "__main__":
    sys.exit(main())

"""Reprocessing rejects, the pure part: which rejects a run takes, and what judging one again
decides (move it, update its reason, or leave it), with no database."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmnh.events import KafkaMessage, Reason
from lmnh.museum import KIOSK_REFERENCE, LONDON, Reference
from lmnh.reprocess import (
    Keep,
    Move,
    Selection,
    StoredReject,
    Tally,
    instant,
    judge,
    parse_args,
    plan,
    site_names,
    wanted_sites,
)
from lmnh.store import copy_row
from lmnh.validation import validate


def reference(*, new_exhibition_opened: date | None = None) -> Reference:
    """The kiosk feed's reference data with database ids, and EXH_06 when it has opened."""
    starts = dict(KIOSK_REFERENCE.exhibition_start)
    if new_exhibition_opened is not None:
        starts["EXH_06"] = new_exhibition_opened
    return Reference(
        exhibition_start=starts,
        rating_values=KIOSK_REFERENCE.rating_values,
        request_values=KIOSK_REFERENCE.request_values,
        exhibition_ids={public_id: n + 1 for n, public_id in enumerate(sorted(starts))},
        rating_ids={value: value + 1 for value in KIOSK_REFERENCE.rating_values},
        request_ids={value: value + 1 for value in KIOSK_REFERENCE.request_values},
    )


BEFORE = reference()
AFTER = reference(new_exhibition_opened=date(2026, 1, 1))
AT = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # a Friday, open
RECEIVED = AT + timedelta(seconds=2)


def kiosk(site: str, val: int, at: datetime = AT, kind: int | None = None) -> bytes:
    message: dict[str, object] = {"at": at.isoformat(), "site": site, "val": val}
    if kind is not None:
        message["type"] = kind
    return json.dumps(message).encode()


def stored(raw: bytes | None, offset: int = 7, received: datetime = RECEIVED) -> StoredReject:
    """A reject as the pipeline stored it, judged against BEFORE when it was received."""
    message = KafkaMessage("lmnh", 2, offset, raw, None)
    outcome = validate(raw, BEFORE, received)
    table, line = copy_row(message, outcome, BEFORE, received.isoformat())
    assert table == 2, "the test's message must be a reject"
    _raw, code, reason, _time, _received, named, *_ = line.rstrip("\n").split("\t")
    return StoredReject(offset, message, code, reason, None if named == "\\N" else named, received)


def test_a_new_exhibitions_rating_moves_with_its_coordinates() -> None:
    reject = stored(kiosk("6", 3))
    assert reject.reason_code == Reason.INVALID_SITE
    decision = judge(reject, AFTER)
    assert isinstance(decision, Move)
    assert (decision.table, decision.site) == (0, "EXH_06")
    exhibition, rating, event_at, topic, partition, offset = decision.line.rstrip("\n").split("\t")
    assert (int(exhibition), int(rating)) == (AFTER.exhibition_ids["EXH_06"], 4)
    assert datetime.fromisoformat(event_at) == AT
    assert (topic, partition, offset) == ("lmnh", "2", "7")


def test_a_new_exhibitions_request_moves_to_the_requests() -> None:
    decision = judge(stored(kiosk("6", -1, kind=1)), AFTER)
    assert isinstance(decision, Move)
    assert decision.table == 1


def test_a_reject_judged_again_against_the_same_reference_is_unchanged() -> None:
    for raw in (kiosk("6", 3), kiosk("2", 9), b"not json", None, kiosk("1", 2, AT.replace(hour=3))):
        decision = judge(stored(raw), BEFORE)
        assert isinstance(decision, Keep)
        assert not decision.changed, raw


def test_a_reject_that_still_fails_gets_todays_reason_and_exhibition() -> None:
    night = AT.replace(hour=23)  # the museum is closed: out of hours once the site is known
    decision = judge(stored(kiosk("6", 3, night)), AFTER)
    assert isinstance(decision, Keep)
    assert decision == Keep(Reason.OUT_OF_HOURS.value, decision.reason, "EXH_06", changed=True)
    assert "outside opening hours" in decision.reason


def test_time_rules_judge_as_of_the_time_the_message_was_received() -> None:
    # Received before its own `at` (a kiosk clock ahead): from the future, then and now.
    early = stored(kiosk("6", 3), received=AT - timedelta(minutes=1))
    decision = judge(early, AFTER)
    assert isinstance(decision, Keep)
    assert decision.reason_code == Reason.FUTURE_AT
    # An exhibition that opened after the message was sent: before it opened, judged by date.
    opened_later = reference(new_exhibition_opened=date(2026, 11, 21))
    decision = judge(stored(kiosk("6", 3)), opened_later)
    assert isinstance(decision, Keep)
    assert decision.reason_code == Reason.BEFORE_EXHIBITION_OPENED


def test_a_plan_moves_updates_and_leaves_rows_and_counts_them() -> None:
    rejects = [
        stored(kiosk("6", 3), offset=1),
        stored(kiosk("6", -1, kind=0), offset=2),
        stored(kiosk("6", 1, AT.replace(hour=23)), offset=3),  # out of hours now
        stored(kiosk("2", 9), offset=4),  # still an invalid val: unchanged
        stored(kiosk("7", 3), offset=5),  # still an unknown site: unchanged
    ]
    batch = plan(rejects, AFTER, Selection())
    assert [len(lines) for lines in batch.lines] == [1, 1]
    assert batch.retired == [1, 2]
    assert [row_id for row_id, _ in batch.updates] == [3]
    assert batch.tally.moved == {("invalid_site", "EXH_06"): 2}
    assert batch.tally.kept == {"out_of_hours": 1, "invalid_val": 1, "invalid_site": 1}
    assert batch.tally.unchanged == 2
    assert batch.tally.summary(dry_run=False) == (
        "moved 2 (ratings 1, requests 1); still rejected 3"
        " (invalid_site 1, invalid_val 1, out_of_hours 1); unchanged 2"
    )
    only_site_7 = plan(rejects, AFTER, Selection(sites=wanted_sites(["7"])))
    assert only_site_7.tally.kept == {"invalid_site": 1}
    assert not only_site_7.retired


def test_tallies_add_up() -> None:
    one = plan([stored(kiosk("6", 3), offset=1)], AFTER, Selection()).tally
    two = plan([stored(kiosk("2", 9), offset=2)], AFTER, Selection()).tally
    both = one + two
    assert (both.ratings, sum(both.moved.values()), both.kept, both.unchanged) == (
        1,
        1,
        {"invalid_val": 1},
        1,
    )
    assert Tally().summary(dry_run=True) == (
        "would move 0 (ratings 0, requests 0); still rejected 0; unchanged 0"
    )
    assert one.moves() == ["         1  invalid_site -> EXH_06"]


@pytest.mark.parametrize(
    ("raw", "named", "names"),
    [
        (kiosk("6", 3), None, {"6", "EXH_06"}),
        (kiosk("2", 9), "EXH_02", {"2", "EXH_02"}),
        (b'{"site": "06"}', None, {"06"}),  # not how a kiosk writes site 6
        (b'{"site": 6}', None, set()),
        (b'{"site": "lobby"}', None, {"lobby"}),
        (b"\xff\xfe", None, set()),
        (b"[1, 2]", None, set()),
        (None, None, set()),
    ],
)
def test_a_rejects_site_goes_by_each_of_its_names(
    raw: bytes | None, named: str | None, names: set[str]
) -> None:
    assert site_names(raw, named) == names


def test_a_site_asked_for_matches_by_number_or_public_id() -> None:
    assert wanted_sites(["6", "EXH_07", "lobby"]) == {"6", "EXH_06", "EXH_07", "lobby"}
    for asked in ("6", "EXH_06"):
        assert Selection(sites=wanted_sites([asked])).takes_site(kiosk("6", 3), None)
    assert not Selection(sites=wanted_sites(["EXH_07"])).takes_site(kiosk("6", 3), None)
    assert Selection().takes_site(b"anything", None)


@given(st.binary(max_size=200) | st.none(), st.sampled_from([None, "EXH_01"]))
def test_naming_a_rejects_site_never_raises(raw: bytes | None, named: str | None) -> None:
    names = site_names(raw, named)
    assert named is None or named in names


def test_times_without_an_offset_are_on_the_museums_clock() -> None:
    assert instant("2026-07-01") == datetime(2026, 7, 1, tzinfo=LONDON)
    assert instant("2026-07-01T09:00:00+00:00") == datetime(2026, 7, 1, 9, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError):
        instant("yesterday")


def test_the_command_line_refuses_what_it_cannot_do(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(["--reason", "invalid_site", "--reason", "out_of_hours", "--site", "6"])
    assert args.reason == ["invalid_site", "out_of_hours"]
    for wrong in (
        ["--reason", "no_such_reason"],
        ["--since", "2026-11-21", "--until", "2026-11-20"],
        ["--batch-size", "0"],
    ):
        with pytest.raises(SystemExit) as exited:
            parse_args(wrong)
        assert exited.value.code == 2, wrong
    capsys.readouterr()

"""Poison messages end to end: lone surrogates and NULs (escaped in JSON, in every field and in
keys), raw NUL bytes, invalid UTF-8, a value near the broker's record limit, very deep nesting,
an empty value and a null one, interleaved with valid kiosk messages and loaded by the real
CLI. The run must end by itself with exit 0, and every message must be stored exactly once:
valid ones as facts, poison kept byte for byte in rejected_message with the reason code the
validator gives it (or `unstorable`, when PostgreSQL refused it as such), and a reason that is
one line of valid UTF-8 without NUL."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lmnh.events import Outcome, RatingEvent, Rejection, RequestEvent
from lmnh.museum import KIOSK_REFERENCE
from lmnh.validation import validate
from tests.integration.support import (
    Target,
    consumed,
    high_watermarks,
    produce_records,
    run,
)
from tests.integration.test_hostile import OVERSIZED_BYTES

pytestmark = pytest.mark.integration

AT = "2026-11-20T12:29:17.958630+00:00"
UNSTORABLE = "unstorable"  # lmnh.events.Reason.UNSTORABLE: PostgreSQL refused it as such
PIPELINE_TIMEOUT_S = 120

# Lone surrogates (high, low, a pair in the wrong order) and NUL, which PostgreSQL's text can
# not hold; a valid pair (an emoji) as the control.
POISON_TEXT = {
    "high surrogate": "\ud800",
    "low surrogate": "\udc00",
    "reversed surrogate pair": "\udc00\ud800",
    "NUL": "\x00",
}


def document(fields: Any) -> bytes:
    """JSON as a kiosk could send it: json.dumps writes lone surrogates and NUL as the escapes
    \\ud800 and \\u0000, so the bytes are plain ASCII."""
    return json.dumps(fields).encode()


def rating(**changes: Any) -> dict[str, Any]:
    return {"at": AT, "site": "5", "val": 3, **changes}


def request(**changes: Any) -> dict[str, Any]:
    return {"at": AT, "site": "2", "val": -1, "type": 1, **changes}


def poison_messages() -> list[tuple[str, bytes | None]]:
    poison: list[tuple[str, bytes | None]] = []
    for name, text in POISON_TEXT.items():
        # In each field's value, alone and after a valid value.
        poison += [
            (f"{name} as at", document(rating(at=text))),
            (f"{name} in at", document(rating(at=AT + text))),
            (f"{name} as site", document(rating(site=text))),
            (f"{name} in site", document(rating(site="5" + text))),
            (f"{name} as val", document(rating(val=text))),
            (f"{name} in val", document(rating(val="3" + text))),
            (f"{name} as a request's type", document(request(type=text))),
            (f"{name} in a request's type", document(request(type="1" + text))),
            (f"{name} as a rating's type", document(rating(type=text))),
            # In keys: an extra key (ignored, so the message is valid), a spoiled required
            # key, a key given twice (the reason names it), a key holding the poison as well.
            (f"{name} as an extra key", document({text: 1, **rating()})),
            (
                f"{name} inside the key site",
                document({"s" + text + "ite": "5", "at": AT, "val": 3}),
            ),
            (f"{name} inside the key at", document({"a" + text + "t": AT, "site": "5", "val": 3})),
            (f"{name} inside the key val", document({"at": AT, "site": "5", "v" + text + "al": 3})),
            (
                f"{name} as a duplicated key",
                b'{"%s": 1, "%s": 2}' % ((json.dumps(text)[1:-1].encode(),) * 2),
            ),
            (f"{name} as key and value", document({text: text, **rating(site=text)})),
            (f"{name} as a top-level string", document(text)),
            (f"{name} in an array", json.dumps([text]).encode()),
        ]
    valid = document(rating())
    poison += [
        ("a valid surrogate pair (emoji) as site", document(rating(site="\U0001f600"))),
        ("raw NUL byte", b"\x00"),
        ("raw NUL bytes", b"\x00" * 64),
        ("raw NUL inside a string", valid.replace(b'"5"', b'"5\x00"')),
        ("raw NUL before the document", b"\x00" + valid),
        ("raw NUL after the document", valid + b"\x00"),
        ("invalid UTF-8 0xff", b"\xff"),
        ("overlong encoding of /", b"\xc0\xaf"),
        ("overlong encoding inside site", valid.replace(b'"5"', b'"\xc0\xb5"')),
        ("CESU-8 high surrogate", b"\xed\xa0\x80"),
        ("CESU-8 low surrogate", b"\xed\xb0\x80"),
        ("CESU-8 surrogate pair", b"\xed\xa0\xbd\xed\xb8\x80"),
        ("CESU-8 surrogate inside site", valid.replace(b'"5"', b'"\xed\xa0\x80"')),
        ("code point above U+10FFFF", b"\xf4\x90\x80\x80"),
        ("lone continuation byte", b"\x80"),
        ("truncated sequence", valid + b"\xe2\x82"),
        ("UTF-16 with a byte order mark", json.dumps(rating()).encode("utf-16")),
        (
            "~1 MB of lone surrogate escapes as at",
            document(rating(at="\ud800" * (OVERSIZED_BYTES // 6))),
        ),
        ("~1 MB of raw NUL bytes", b"\x00" * OVERSIZED_BYTES),
        ("~1 MB of invalid UTF-8", b"\xff" * OVERSIZED_BYTES),
        ("100,000 [ unclosed", b"[" * 100_000),
        ("100,000 [ closed", b"[" * 100_000 + b"]" * 100_000),
        ("100,000 nested objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
        ("empty value", b""),
        ("null value", None),
    ]
    return poison


def valid_messages(count: int) -> list[tuple[str, bytes | None]]:
    """Ratings and requests of every exhibition, in opening hours, a week or more ago."""
    start = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)  # GMT: London's clock is UTC's
    messages: list[tuple[str, bytes | None]] = []
    for n in range(count):
        at = (start + timedelta(days=n % 9, minutes=7 * n % 540, microseconds=n)).isoformat()
        if n % 4 == 3:
            fields: dict[str, Any] = {"at": at, "site": str(n % 6), "val": -1, "type": n % 2}
        else:
            fields = {"at": at, "site": str(n % 6), "val": n % 5}
        messages.append((f"valid #{n}", document(fields)))
    return messages


def fact_rows(target: Target) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(partition, offset, public id, value, event time) of every stored rating and request."""
    topic = (target.topic,)
    ratings = target.query(
        "SELECT kafka_partition, kafka_offset, e.public_id, r.rating_value, i.event_at"
        " FROM rating_interaction i JOIN exhibition e USING (exhibition_id)"
        " JOIN rating r USING (rating_id) WHERE kafka_topic = %s",
        topic,
    )
    requests = target.query(
        "SELECT kafka_partition, kafka_offset, e.public_id, q.request_value, i.event_at"
        " FROM request_interaction i JOIN exhibition e USING (exhibition_id)"
        " JOIN request q USING (request_id) WHERE kafka_topic = %s",
        topic,
    )
    return ratings, requests


def run_pipeline(target: Target, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI, bounded: a hang fails the test with what the pipeline said so far."""
    command = target.pipeline_command(*args)
    try:
        return run(command, target.env, timeout=PIPELINE_TIMEOUT_S)
    except subprocess.TimeoutExpired as hung:
        said = (_text(hung.stdout) + _text(hung.stderr))[-3000:]
        pytest.fail(f"the pipeline did not end within {PIPELINE_TIMEOUT_S} s:\n{said}")


def _text(output: bytes | str | None) -> str:
    if isinstance(output, bytes):
        return output.decode("utf-8", "backslashreplace")
    return output or ""


def test_poison_messages_end_to_end_are_each_stored_once_and_never_stop_the_loop(
    target: Target, tmp_path: Path
) -> None:
    poison = poison_messages()
    valid = valid_messages(2 * len(poison))
    # Each poison message between two valid ones, so that all three share batches and partitions.
    messages = [m for n, bad in enumerate(poison) for m in (valid[2 * n], bad, valid[2 * n + 1])]
    partitions = target.settings.topic_partitions
    delivered = produce_records(
        target,
        [{"value": value, "partition": n % partitions} for n, (_, value) in enumerate(messages)],
    )
    sent = {
        (d.partition, d.offset): message for d, message in zip(delivered, messages, strict=True)
    }
    assert len(sent) == len(messages)

    invalid_log = tmp_path / "invalid.log"
    result = run_pipeline(target, "--limit", str(len(messages)), "--logfile", str(invalid_log))
    said = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 0, said
    assert consumed(result.stdout) == len(messages), said

    # Every message is in exactly one table, and nothing else is.
    topic = (target.topic,)
    ratings, requests = fact_rows(target)
    rejected = target.query(
        "SELECT kafka_partition, kafka_offset, raw, reason_code, convert_to(reason, 'UTF8')"
        " FROM rejected_message WHERE kafka_topic = %s",
        topic,
    )
    stored = Counter((p, o) for p, o, *_ in ratings + requests + rejected)
    doubled = {sent.get(c, ("not sent", None))[0]: n for c, n in stored.items() if n > 1}
    assert not doubled, f"stored more than once: {doubled}"
    lost = sorted(label for c, (label, _) in sent.items() if c not in stored)
    assert not lost, f"{len(lost)} of {len(sent)} messages stored nowhere: {lost}"
    assert set(stored) == set(sent), "rows for messages that were never sent"

    # Each one where the validator says it belongs, the poison byte for byte.
    facts: dict[tuple[int, int], Outcome] = {}
    facts |= {(p, o): RatingEvent(x, v, at) for p, o, x, v, at in ratings}
    facts |= {(p, o): RequestEvent(x, v, at) for p, o, x, v, at in requests}
    kept = {(p, o): (None if raw is None else bytes(raw), code) for p, o, raw, code, _ in rejected}
    now = datetime.now(UTC)
    wrong = []
    for coordinates, (label, value) in sorted(sent.items()):
        expected: Outcome = validate(value, KIOSK_REFERENCE, now)
        if isinstance(expected, Rejection):
            if coordinates not in kept:
                wrong.append(f"{label}: expected rejected ({expected.code}), stored as a fact")
                continue
            raw, code = kept[coordinates]
            if raw != value:
                wrong.append(f"{label}: raw bytes differ ({_short(raw)} != {_short(value)})")
            if code not in (expected.code.value, UNSTORABLE):
                wrong.append(f"{label}: reason code {code}, expected {expected.code} or unstorable")
        elif coordinates not in facts:
            wrong.append(f"{label}: valid ({expected}), but rejected as {kept[coordinates][1]}")
        elif facts[coordinates] != expected:
            wrong.append(f"{label}: stored {facts[coordinates]}, expected {expected}")
    assert not wrong, "\n".join(wrong)

    # Every reason is one line of valid UTF-8 without NUL (lone surrogates cannot be encoded).
    bad_reasons = [
        f"{sent[(p, o)][0]} ({code}): {problem}"
        for p, o, _, code, reason in rejected
        if (problem := reason_problem(bytes(reason)))
    ]
    assert not bad_reasons, "\n".join(bad_reasons)

    # Nothing left behind: each partition's stored next offset is its high watermark.
    assert target.database_offsets() == high_watermarks(target, partitions)

    # Nothing went wrong on the way, not even the logging of the poison: --logfile names every
    # rejected message, and stays valid UTF-8.
    failure = traceback_in(result.stderr)
    assert not failure, failure
    log = invalid_log.read_bytes().decode("utf-8")
    unlogged = [
        sent[(p, o)][0] for p, o, *_ in rejected if f"invalid {target.topic}[{p}]@{o} " not in log
    ]
    assert not unlogged, f"rejected but not in --logfile: {unlogged}"


def _short(value: bytes | None) -> str:
    return "None" if value is None else repr(value[:60]) + (f" ({len(value)} bytes)")


def traceback_in(output: str) -> str:
    """The first traceback in `output` with the line before it (logging's own marker), or ""."""
    start = output.find("Traceback")
    if start < 0:
        return ""
    start = output.rfind("\n", 0, max(start - 1, 0)) + 1
    return output[start : start + 2500]


def reason_problem(reason: bytes) -> str:
    """What is wrong with a stored reason (its bytes in UTF-8, as PostgreSQL holds it), or ""
    when it is one non-empty line of valid UTF-8 without NUL."""
    try:
        text = reason.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"not UTF-8: {error}"
    if not text or "\x00" in text or text.splitlines() != [text]:
        return f"not one line without NUL: {text!r}"
    return ""

"""The fuzzer's findings stay fixed, its harness catches what they were found for, and a short
seeded run of `python -m fuzz` finds nothing new.

Every file in tests/data/fuzz_findings is an input that once broke an invariant of
`fuzz.harness` (a reason that was not one line of valid UTF-8, most of them); replaying each
must now pass. The short run is what CI can afford: a few thousand executions, with its corpus
and findings in a temporary folder so that it never writes into the tracked tree.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fuzz import harness
from fuzz.__main__ import FINDINGS, ROOT, SEEDS, Summary
from lmnh.events import Outcome, RatingEvent, Reason, Rejection, RequestEvent

RUNS = 50_000  # about 2 s here
NOON = datetime(2025, 7, 1, 11, tzinfo=UTC)  # noon in London, a valid interaction's time


def _findings() -> list[Path]:
    return sorted(path for path in FINDINGS.iterdir() if path.is_file())


@pytest.mark.parametrize("path", _findings(), ids=lambda path: path.name)
def test_finding_stays_fixed(path: Path) -> None:
    harness.check(path.read_bytes())


def test_every_finding_is_kept_as_it_was_found() -> None:
    """The fuzzer (and libFuzzer, for a crash or a timeout) names an input by its SHA-1: a
    name that does not match means the file was edited after it was found."""
    for path in _findings():
        digest = hashlib.sha1(path.read_bytes(), usedforsecurity=False).hexdigest()
        assert path.name.split("-", 1)[1] == digest


@pytest.mark.parametrize(
    ("outcome", "broken"),
    [
        (Rejection(Reason.INVALID_SITE, 'site "\ud800" is not'), "bytes: detail not valid UTF-8"),
        (Rejection(Reason.INVALID_SITE, 'site "1\u2028" is not'), "bytes: detail not one line"),
        (Rejection(Reason.INVALID_SITE, 'site "1\x85" is not'), "bytes: detail not one line"),
        (Rejection(Reason.INVALID_JSON, "key \x00"), "bytes: detail holds NUL"),
        (Rejection(Reason.INVALID_JSON, "x" * 401), "bytes: detail empty or too long"),
        (Rejection(Reason.UNSTORABLE, "refused"), "the store's code"),
        (RatingEvent("EXH_05", 3, NOON.replace(hour=17, minute=30)), "out of hours"),
        (RatingEvent("EXH_05", 3, NOON.replace(year=2022)), "before its exhibition"),
        (RatingEvent("EXH_05", 3, NOON.replace(year=2027)), "in the future"),
        (RatingEvent("EXH_05", 9, NOON), "unknown rating"),
        (RatingEvent("EXH_09", 3, NOON), "unknown exhibition"),
        (RequestEvent("EXH_05", 2, NOON), "unknown request"),
    ],
)
def test_the_harness_catches_what_the_findings_were_found_for(
    monkeypatch: pytest.MonkeyPatch, outcome: Outcome, broken: str
) -> None:
    """Without this, the replays above could pass because the harness checks too little."""
    monkeypatch.setattr(harness, "validate", lambda raw, reference, now: outcome)
    with pytest.raises(harness.InvariantError, match=re.escape(broken)):
        harness.check(b"{}")


def test_the_summary_reads_libfuzzer_and_the_worker() -> None:
    summary = Summary()
    for line in [
        "#4096\tpulse  cov: 100 ft: 200 corp: 60/4000b lim: 8192 exec/s: 2048 rss: 54Mb",
        "FINDING /f/finding-ab text: detail not valid UTF-8 (invalid_site)",
        "#5000\tDONE   cov: 104 ft: 214 corp: 65/4157b lim: 8192 exec/s: 2500 rss: 54Mb",
        "artifact_prefix='/f/'; Test unit written to /f/timeout-cd",
        "stat::number_of_executed_units: 5001",
    ]:
        summary.read(line)
    assert (summary.executions, summary.cov, summary.ft, summary.corpus) == (5001, 104, 214, 65)
    assert summary.findings == [
        "/f/finding-ab (text: detail not valid UTF-8 (invalid_site))",
        "/f/timeout-cd (libFuzzer: crash, timeout or memory)",
    ]


def test_a_short_seeded_fuzz_run_finds_nothing(tmp_path: Path) -> None:
    findings_before = _findings()
    corpus, findings = tmp_path / "corpus", tmp_path / "findings"
    result = subprocess.run(
        [
            *[sys.executable, "-m", "fuzz", "--runs", str(RUNS), "--seed", "7"],
            *["--corpus", str(corpus), "--findings", str(findings)],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    summary = re.fullmatch(
        r"fuzz: ([\d,]+) executions in [\d.]+ s \([\d,]+/s\), seed 7;"
        r" coverage: cov ([\d,]+), ft ([\d,]+); corpus [\d,]+ inputs; findings: none\n",
        result.stdout,
    )
    assert summary, result.stdout
    executions, cov, ft = (int(group.replace(",", "")) for group in summary.groups())
    assert executions >= RUNS
    assert cov > 50 and ft > cov  # the validator's bytecode was instrumented
    assert list(findings.iterdir()) == []
    seeds = [path for path in SEEDS.iterdir() if path.suffix == ".json"]
    assert len(list(corpus.iterdir())) >= len(seeds)
    assert _findings() == findings_before  # nothing written into the tracked folder

"""`python -m fuzz`: coverage-guided fuzzing (atheris, libFuzzer) of bytes -> validate -> COPY line.

The working corpus is seeded with the golden messages and every past finding; libFuzzer runs
in a child process (`fuzz.worker`) whose output is passed through to stderr; stdout gets one
summary: executions, coverage (libFuzzer's `cov:` edges and `ft:` features), corpus size and
findings. Exit status 0 when nothing broke an invariant, 1 otherwise.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "tests" / "data" / "messages"
FINDINGS = ROOT / "tests" / "data" / "fuzz_findings"
DICTIONARY = Path(__file__).with_name("json.dict")
DEFAULT_DURATION_S = 60
# Room for the largest interesting messages (a 4,300-digit integer) without slowing mutation.
MAX_LEN = 8192
# An input that takes this long is a finding too (libFuzzer writes it out as timeout-*).
TIMEOUT_S = 5

_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_EXECUTED = re.compile(r"^stat::number_of_executed_units: (\d+)")
_FINDING = re.compile(r"^FINDING (\S+) (.*)")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


@dataclass
class Summary:
    """What the child said, as far as the summary line needs it."""

    executions: int = 0
    cov: int = 0
    ft: int = 0
    corpus: int = 0
    findings: list[str] = field(default_factory=list)

    def read(self, line: str) -> None:
        if status := _STATUS.match(line):
            self.executions, self.cov, self.ft, self.corpus = map(int, status.groups())
        elif executed := _EXECUTED.match(line):
            self.executions = int(executed.group(1))
        elif finding := _FINDING.match(line):
            self.findings.append(f"{finding.group(1)} ({finding.group(2)})")
        elif artifact := _ARTIFACT.search(line):
            self.findings.append(f"{artifact.group(1)} (libFuzzer: crash, timeout or memory)")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument(
        "--duration",
        type=int,
        metavar="SECONDS",
        help=f"stop after this long (default {DEFAULT_DURATION_S} unless --runs is given)",
    )
    parser.add_argument("--runs", type=int, metavar="N", help="stop after N executions")
    parser.add_argument(
        "--seed", type=int, default=1, help="libFuzzer's random seed; 0 picks one (default 1)"
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        metavar="DIR",
        help="working corpus, kept and grown across runs (default: a temporary directory)",
    )
    parser.add_argument(
        "--findings",
        type=Path,
        metavar="DIR",
        default=FINDINGS,
        help="where inputs that break an invariant are written (default: the tracked"
        " tests/data/fuzz_findings, whose every file the unit tests replay)",
    )
    parser.add_argument("libfuzzer", nargs="*", help="more libFuzzer flags, after --")
    args = parser.parse_args(argv)
    if args.duration is None and args.runs is None:
        args.duration = DEFAULT_DURATION_S
    return args


def seed(corpus: Path, findings: Path) -> None:
    """Copy in the golden messages and the past findings (libFuzzer reads a flat directory)."""
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = [path for path in SEEDS.iterdir() if path.suffix == ".json"]
    for directory in dict.fromkeys([FINDINGS, findings]):
        if directory.is_dir():
            seeds += [path for path in directory.iterdir() if path.is_file()]
    for path in seeds:
        target = corpus / f"seed-{path.parent.name}-{path.name}"
        if not target.exists():
            shutil.copyfile(path, target)


def fuzz(args: argparse.Namespace, corpus: Path) -> tuple[int, Summary]:
    """Run the child to its end, echoing its output, and return its status and summary."""
    command = [
        sys.executable,
        "-m",
        "fuzz.worker",
        str(args.findings),
        str(corpus),
        f"-seed={args.seed}",
        f"-dict={DICTIONARY}",
        f"-max_len={MAX_LEN}",
        f"-timeout={TIMEOUT_S}",
        f"-artifact_prefix={args.findings}/",
        "-print_final_stats=1",
        *([f"-max_total_time={args.duration}"] if args.duration is not None else []),
        *([f"-runs={args.runs}"] if args.runs is not None else []),
        *args.libfuzzer,
    ]
    summary = Summary()
    # The command is this interpreter running this package: nothing in it comes from outside.
    with subprocess.Popen(  # noqa: S603
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="backslashreplace",
    ) as child:
        for line in child.stdout or ():
            sys.stderr.write(line)
            summary.read(line)
    return child.returncode, summary


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.findings.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lmnh-fuzz-") as scratch:
        corpus = args.corpus or Path(scratch)
        seed(corpus, args.findings)
        status, summary = fuzz(args, corpus)
    seconds = time.monotonic() - started
    print(
        f"fuzz: {summary.executions:,} executions in {seconds:.1f} s"
        f" ({summary.executions / seconds:,.0f}/s), seed {args.seed};"
        f" coverage: cov {summary.cov:,}, ft {summary.ft:,};"
        f" corpus {summary.corpus:,} inputs; findings: {len(summary.findings) or 'none'}"
    )
    for finding in summary.findings:
        print(f"  {finding}")
    if status != 0 and not summary.findings:
        print(f"libFuzzer exited with status {status}")
    return 0 if status == 0 and not summary.findings else 1


if __name__ == "__main__":
    sys.exit(main())

"""The local development stack: a single-node Kafka broker and a PostgreSQL server.

`python -m stack up|down|status` keeps all their state under the git-ignored `.stack/`
folder at the repository root, so a fresh clone needs nothing but Java, Maven and Debian's
PostgreSQL package (installed on demand when running as root).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

from lmnh.errors import PipelineError

REPO_ROOT = Path(__file__).resolve().parent.parent
STACK_DIR = REPO_ROOT / ".stack"


class StackError(PipelineError):
    """A failure of the local stack, reported as one line that names the fix (exit 1)."""


def print_tail(path: Path, lines: int = 20) -> None:
    """Show the end of a service's log, where the reason for a failed start usually is."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8", errors="replace") as log:
        tail = deque(log, maxlen=lines)
    print(f"--- last lines of {path} ---")
    print("".join(tail).rstrip())
    print("---")

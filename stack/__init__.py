"""The local development stack: a single-node Kafka broker and a PostgreSQL server.

`python -m stack up|down|status` keeps all their state under the git-ignored `.stack/`
folder at the repository root, so a fresh clone needs nothing but Java, Maven and Debian's
PostgreSQL package (installed on demand when running as root). Installed as a package
(`pip install .`, not a checkout), `lmnh-stack` keeps it in `./.stack/` of the directory it
is run from instead, beside the `./.env` that every program reads: never in site-packages.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

from lmnh.errors import PipelineError

_PACKAGE_PARENT = Path(__file__).resolve().parent.parent
# A source checkout (also under `pip install -e .`) has its pyproject.toml beside the package.
IN_CHECKOUT = (_PACKAGE_PARENT / "pyproject.toml").is_file()
REPO_ROOT = _PACKAGE_PARENT if IN_CHECKOUT else Path.cwd()
"""The folder that holds `.stack/`: the checkout, or the current directory of an installed
package's command."""
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

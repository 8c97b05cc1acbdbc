"""libFuzzer's side of `python -m fuzz`, in a process of its own because libFuzzer ends the
process itself when done: `fuzz.__main__` starts it, reads its output and sums it up.

Usage: `python -m fuzz.worker FINDINGS_DIR [libFuzzer arguments]`. An input that breaks an
invariant is written to FINDINGS_DIR and reported on stderr as a `FINDING` line, once per
distinct failure, and fuzzing goes on, so that one run reports every distinct problem it meets.
"""

from __future__ import annotations

import hashlib
import sys
import traceback
from pathlib import Path

import atheris

# From their own modules, where types-atheris declares them (its __init__.pyi does not re-export
# them); they are the same objects as atheris.enabled_hooks and atheris.instrument_imports.
from atheris.function_hooks import enabled_hooks
from atheris.import_hook import instrument_imports

# Feeds libFuzzer the literals that str.startswith/endswith compare with. (Not the "RegEx"
# hook: its pattern proxy breaks json's scanner, which calls match() with a position.)
enabled_hooks.add("str")
# Coverage comes from instrumented bytecode, so lmnh must be first imported inside this.
with instrument_imports(include=["lmnh"]):
    from fuzz.harness import InvariantError, check

_seen: set[str] = set()


def _signature(error: Exception) -> str:
    """What tells two failures apart: the broken invariant, or where the exception came from."""
    if isinstance(error, InvariantError):
        return error.what
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return type(error).__name__ + where


def _fuzz_one(findings: Path, data: bytes) -> None:
    try:
        check(data)
    except Exception as error:  # every failure is a finding, whatever raised it
        signature = _signature(error)
        if signature in _seen:
            return
        _seen.add(signature)
        path = findings / f"finding-{hashlib.sha1(data, usedforsecurity=False).hexdigest()}"
        path.write_bytes(data)
        sys.stderr.write(f"FINDING {path} {signature}\n")
        traceback.print_exception(error, file=sys.stderr)


def main() -> None:
    findings = Path(sys.argv.pop(1))
    findings.mkdir(parents=True, exist_ok=True)
    atheris.Setup(sys.argv, lambda data: _fuzz_one(findings, data))
    atheris.Fuzz()


if __name__ == "__main__":
    main()

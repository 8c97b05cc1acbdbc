"""What every command-line program shares: settings, signals, argument types, and the one
mapping from what went wrong to the exit code (documented in the README)."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import math
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from lmnh.config import Settings, load_config, read_environment
from lmnh.errors import ConfigError, ExitCode, FatalError, PipelineError, TransientError

# Well within systemd's TimeoutStopSec (90 s) for the pipeline's unit.
STOP_REPORT_S = 30.0


def load_settings(env_file: Path | None) -> Settings:
    """Settings from the environment and .env; raises ConfigError listing every problem."""
    return load_config(read_environment(env_file))


def exit_code_for(error: BaseException) -> ExitCode:
    """The exit code of a program that stops on `error`: the same for every program."""
    if isinstance(error, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if isinstance(error, ConfigError):
        return ExitCode.CONFIG
    if isinstance(error, FatalError):
        return error.exit_code
    if isinstance(error, TransientError):
        # Still failing when the program had to give up waiting: the database did not come
        # back (the broker's waits end in a FatalError that names it).
        return ExitCode.DATABASE_UNREACHABLE
    return ExitCode.UNEXPECTED


def fail(program: str, error: BaseException, interrupted: str = "") -> ExitCode:
    """Say on stderr why `program` stops, in one line per problem, and return its exit code."""
    if isinstance(error, ConfigError):
        for problem in error.problems:
            print(f"{program}: configuration error: {problem}", file=sys.stderr)
    elif isinstance(error, KeyboardInterrupt):
        if interrupted:
            print(f"{program}: interrupted: {interrupted}", file=sys.stderr)
    else:
        print(f"{program}: error: {error}", file=sys.stderr)
    return exit_code_for(error)


def run(program: str, body: Callable[[], int], *, interrupted: str = "") -> int:
    """Run a program's body. The project's errors and a second Ctrl-C end as `fail` says;
    anything else is a bug, and keeps its traceback (exit 1)."""
    try:
        return body()
    except (PipelineError, KeyboardInterrupt) as error:
        return fail(program, error, interrupted)


def stop_on_signals(
    stop: threading.Event,
    log: logging.Logger,
    first_stop: str,
    report_after_s: float = STOP_REPORT_S,
) -> None:
    """First SIGINT/SIGTERM sets `stop` (the program finishes what it holds); a second one
    raises KeyboardInterrupt to give up at once. A process still running `report_after_s`
    after the first writes every thread's stack to stderr: a stop that hangs says where,
    before a supervisor kills it and the evidence with it."""

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("%s: %s", signal.Signals(signum).name, first_stop)
        if sys.__stderr__ is not None:  # the real stream: faulthandler writes to its fd
            faulthandler.dump_traceback_later(report_after_s, file=sys.__stderr__)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)


def positive_number(text: str) -> float:
    """argparse type: a finite number above zero (a rate, a number of seconds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number above zero."""
    value = whole_number(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def whole_number(text: str) -> int:
    """argparse type: a whole number, zero or above."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number, 0 or above")
    return value

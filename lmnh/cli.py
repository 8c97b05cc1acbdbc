"""Pieces shared by the command-line entry points (the pipeline and the simulator)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from lmnh.config import Settings, load_config, read_environment
from lmnh.errors import ConfigError, ExitCode


def load_settings(env_file: Path | None) -> Settings:
    """Settings from the environment and .env; on problems, list them all and exit 2."""
    try:
        return load_config(read_environment(env_file))
    except ConfigError as error:
        for problem in error.problems:
            print(f"configuration error: {problem}", file=sys.stderr)
        raise SystemExit(ExitCode.CONFIG) from None


def stop_on_signals(stop: threading.Event, log: logging.Logger, first_stop: str) -> None:
    """First SIGINT/SIGTERM sets `stop` (the program finishes what it holds); a second one
    raises KeyboardInterrupt to give up at once."""

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("%s: %s", signal.Signals(signum).name, first_stop)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)


def positive_int(text: str) -> int:
    """argparse type: a whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value

"""Shared plumbing of the stage scripts: arguments, leftovers of killed runs, one-line errors."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from foldwise.core.errors import UserError
from foldwise.core.outputs import remove_leftovers

# Errors that mean "bad input or missing prerequisite": the message already
# names the key, file or value, so a traceback would only hide it. Anything
# else (a bug, a KeyError from a missing dict entry included) keeps its traceback.
USER_ERRORS = (UserError, ValueError, FileNotFoundError)
DEBUG_ENV = "FOLDWISE_DEBUG"


def report_user_errors(main: Callable[[], None]) -> int:
    """Run ``main``; on a user error print ``error: ...`` (one line, no traceback) and return 1, else 0.

    Set FOLDWISE_DEBUG=1 to get the full traceback instead. Stages and console scripts share it.
    """
    try:
        main()
    except USER_ERRORS as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; exit 1 after a user error's one line (``report_user_errors``)."""
    if report_user_errors(main):
        sys.exit(1)


def parse_stage_args(parser: argparse.ArgumentParser, outputs: Sequence[str]) -> argparse.Namespace:
    """Parse the stage's arguments, then delete the temporaries a killed run left next to the
    outputs named by the arguments ``outputs`` (a kill -9 gives no chance to clean up)."""
    args = parser.parse_args()
    for leftover in remove_leftovers(*(getattr(args, name) for name in outputs)):
        print(f"removed {leftover}, left by an interrupted run", file=sys.stderr)
    return args


def locked_md5(path: str | Path) -> str:
    """The md5 dvc.lock records for output ``path`` ('' when there is none), for error messages
    that name DVC's cached copy of a damaged file: DVC trusts its cache and re-links a damaged
    object on every checkout and commit, until that object is deleted."""
    import yaml  # here: the stages that only print an error need not import it

    lock = Path("dvc.lock")  # stages run in the project (a queued run: its own copy and its lock)
    try:
        stages = yaml.safe_load(lock.read_text())["stages"]
        outs = [o for stage in stages.values() for o in stage.get("outs", [])]
        return next(str(o["md5"]) for o in outs if o.get("path") == Path(path).as_posix())
    except (OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration, yaml.YAMLError):
        return ""

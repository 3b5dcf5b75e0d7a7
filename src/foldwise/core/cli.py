"""Shared plumbing of the stage scripts: one-line errors instead of tracebacks."""

from __future__ import annotations

import os
import sys
from typing import Callable

from foldwise.core.errors import UserError

# Errors that mean "bad input or missing prerequisite": the message already
# names the key, file or value, so a traceback would only hide it. Anything
# else (a bug, a KeyError from a missing dict entry included) keeps its traceback.
USER_ERRORS = (UserError, ValueError, FileNotFoundError)
DEBUG_ENV = "FOLDWISE_DEBUG"


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; print ``error: ...`` and exit 1 on a user error.

    Set FOLDWISE_DEBUG=1 to get the full traceback instead.
    """
    try:
        main()
    except USER_ERRORS as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)

"""Shared plumbing of the stage scripts: one-line errors instead of tracebacks."""

from __future__ import annotations

import sys
from typing import Callable

from foldwise.download import DownloadError
from foldwise.params import ParamsError

# Errors that mean "bad input or missing prerequisite": the message already
# names the key, file or value, so a traceback would only hide it.
USER_ERRORS = (ParamsError, DownloadError, KeyError, ValueError, FileNotFoundError, RuntimeError)


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; print ``error: ...`` and exit 1 on a user error."""
    try:
        main()
    except USER_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)

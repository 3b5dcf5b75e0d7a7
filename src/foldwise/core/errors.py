"""Errors that mean bad input or a missing prerequisite, not a bug.

Their message already names the key, file or value and what would be valid, so
a stage prints it as one line (``core.cli``); any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a missing prerequisite; the message says which and how to fix it."""


class UnknownName(UserError, KeyError):
    """A name no registry holds (a model, a dataset); the message lists the valid ones.

    Also a ``KeyError``, as a registry lookup is one; printed without ``KeyError``'s quotes.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

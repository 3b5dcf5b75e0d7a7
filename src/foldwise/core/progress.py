"""Progress bars for long work (download, prepare, the ONNX check, ``foldwise predict``): tqdm on a
terminal, nothing at all when stderr is not one (CI logs, files, DVC's queue workers)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """A ``tqdm`` bar over ``iterable`` (or updated by hand), shown only when stderr is a terminal;
    ``kwargs`` are tqdm's (``total``, ``desc``, ``unit``, ...)."""
    from tqdm import tqdm  # 0.05 s: only where a bar is made

    return tqdm(iterable, disable=None, file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
                **{"leave": False, **kwargs})

"""Checksums of dataset files: what download verifies a fetched file against, and prepare again
before parsing (a damaged copy is named as such instead of failing deep inside a parser).

A source's md5 is of the file or of its decompressed content: Debian's
``dataset-fashion-mnist`` recompressed the official ``.gz`` files, so one
content md5 accepts both.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

CHUNK = 1 << 20  # bytes per read


def file_md5s(path: Path) -> tuple[str, str]:
    """(md5 of the bytes on disk, md5 of the content: decompressed when gzip)."""
    raw = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            raw.update(chunk)
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            return raw.hexdigest(), raw.hexdigest()
    content = hashlib.md5()
    with gzip.open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            content.update(chunk)
    return raw.hexdigest(), content.hexdigest()


def md5_mismatch(path: Path, md5: str) -> str:
    """'' when ``path``'s bytes or content have ``md5``; else what was found, for an error."""
    raw, content = file_md5s(path)
    return "" if md5 in (raw, content) else f"md5 {raw}, content md5 {content}, expected {md5}"


def verify_files(folder: Path, files: dict[str, str | None], fix: str) -> None:
    """Every file of ``files`` (name -> md5, None = not pinned) in ``folder`` has its md5;
    else a ``ValueError`` naming the file, both md5s and ``fix``."""
    for name, md5 in files.items():
        path = Path(folder) / name
        if md5 is None:
            continue
        if not path.is_file():
            raise ValueError(f"{path} is missing; {fix}")
        try:
            mismatch = md5_mismatch(path, md5)
        except (OSError, EOFError) as exc:  # gzip cut short or damaged
            raise ValueError(f"{path} is damaged ({exc}); {fix}") from None
        if mismatch:
            raise ValueError(f"{path} is damaged ({mismatch}); {fix}")

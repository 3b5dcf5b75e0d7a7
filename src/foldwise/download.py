"""Fetch a dataset's original files into a folder, verified by checksum.

Mirrors are tried in order (``FOLDWISE_MIRROR`` first when set); each file
is copied or downloaded to a temporary name and renamed only once its
decompressed md5 matches, so an interrupted run never leaves a file that
looks complete.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import urllib.request
from pathlib import Path

from tqdm import tqdm

from foldwise.datasets import Source

CHUNK = 1 << 20  # bytes per read
TIMEOUT_S = 30.0  # per network read; a silent network must not hang the stage


class DownloadError(RuntimeError):
    """No mirror gave a file whose checksum matches."""


def content_md5(path: Path) -> str:
    """md5 of the file's content, decompressed first when it is gzip (by magic bytes)."""
    return file_md5s(path)[1]


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


def _fetch_url(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name, leave=False) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received < total:
        raise OSError(f"connection closed after {received} of {total} bytes (interrupted download)")


def _is_url(mirror: str) -> bool:
    return mirror.startswith(("http://", "https://"))


def fetch_file(name: str, md5: str, mirrors: list[str], out_dir: Path) -> str:
    """Put a verified ``name`` into ``out_dir``; return the mirror used.

    ``md5`` may be of the file itself or of its decompressed content (the
    latter accepts a mirror that recompressed the same data). Raises
    ``DownloadError`` listing every place tried and why it failed.
    """
    target = out_dir / name
    tmp = out_dir / f".{name}.part"
    failures: list[str] = []
    for mirror in mirrors:
        where = f"{mirror.rstrip('/')}/{name}"
        try:
            if _is_url(mirror):
                _fetch_url(where, tmp)
            else:
                shutil.copyfile(where, tmp)
            raw, content = file_md5s(tmp)
            if md5 not in (raw, content):
                raise ValueError(f"checksum mismatch (md5 {raw}, content md5 {content}, expected {md5})")
        except (OSError, ValueError, EOFError, http.client.HTTPException) as exc:
            # URLError is an OSError; IncompleteRead (connection cut mid-file) an HTTPException
            failures.append(f"  {where}: {exc}")
            tmp.unlink(missing_ok=True)
            continue
        os.replace(tmp, target)
        return mirror
    raise DownloadError(f"could not get {name}; tried:\n" + "\n".join(failures))


def download(source: Source, out_dir: str | Path, extra_mirrors: list[str] | None = None) -> dict[str, str]:
    """Fetch every file of ``source`` into ``out_dir``; return file -> mirror used."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mirrors = [m for m in (extra_mirrors or []) if m] + list(source.mirrors)
    used: dict[str, str] = {}
    errors: list[str] = []
    for name, md5 in source.files.items():
        try:
            used[name] = fetch_file(name, md5, mirrors, out_dir)
        except DownloadError as exc:
            errors.append(str(exc))
    if errors:
        raise DownloadError(
            f"{len(errors)} of {len(source.files)} files could not be fetched.\n"
            + "\n".join(errors)
            + (f"\nHow to fix: {source.install_hint}" if source.install_hint else "")
        )
    return used

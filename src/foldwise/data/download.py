"""Fetch a dataset's original files into a folder, verified by checksum.

Mirrors are tried in order (``FOLDWISE_MIRROR`` first when set); each file
is copied or downloaded to a temporary name and renamed only once its
(decompressed) md5 matches, so an interrupted run never leaves a file that
looks complete. A cut connection is resumed with an HTTP Range request.

A user's own data (``data_path``) is copied in instead, so DVC versions the
exact images a model was trained on.
"""

from __future__ import annotations

import csv
import http.client
import os
import shutil
import urllib.request
import zipfile
from pathlib import Path

from foldwise.core.errors import UserError
from foldwise.core.progress import progress
from foldwise.data.archives import check_links, is_archive, open_tree
from foldwise.data.checksums import CHUNK, md5_mismatch
from foldwise.data.readers import CSV_NAME
from foldwise.data.sources import USER_FOLDER, Source

TIMEOUT_S = 30.0  # per network read; a silent network must not hang the stage
RESUME_ATTEMPTS = 3  # connections per URL when a transfer is cut


class DownloadError(UserError, RuntimeError):
    """No mirror gave a file whose checksum matches."""


def _fetch_url(url: str, dest: Path, attempts: int = RESUME_ATTEMPTS) -> None:
    """Download ``url`` to ``dest``; a cut connection is resumed with an HTTP Range request.

    A server that ignores Range (answers 200, not 206) gets a clean restart.
    """
    received, total = 0, None
    for _ in range(attempts):
        request = urllib.request.Request(url, headers={"Range": f"bytes={received}-"} if received else {})
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            if received and response.status != 206:
                received = 0  # no resume support: start over
            length = int(response.headers.get("Content-Length") or 0)
            total = received + length if length else None
            with open(dest, "ab" if received else "wb") as out, progress(
                total=total, initial=received, unit="B", unit_scale=True, desc=Path(url).name
            ) as bar:
                try:
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                except (OSError, http.client.HTTPException):
                    pass  # connection cut mid-file: resume below
        if total is None or received >= total:
            return
    raise OSError(f"connection closed after {received} of {total} bytes "
                  f"(interrupted download; {attempts} attempts, resuming each time)")


def check_archive(path: Path) -> None:
    """For files without a pinned md5: every zip member's CRC-32 must match (a damaged copy fails)."""
    if not zipfile.is_zipfile(path):
        raise ValueError("not a zip archive (damaged or incomplete download)")
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise ValueError(f"checksum mismatch: member {bad} fails its CRC-32 check (damaged download)")


def _is_url(mirror: str) -> bool:
    return mirror.startswith(("http://", "https://"))


def fetch_file(name: str, md5: str | None, mirrors: list[str], out_dir: Path) -> str:
    """Put a verified ``name`` into ``out_dir``; return the mirror used.

    ``md5`` may be of the file itself or of its decompressed content (the
    latter accepts a mirror that recompressed the same data). Raises
    ``DownloadError`` listing every place tried and why it failed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
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
            if md5 is None:
                check_archive(tmp)
            else:
                mismatch = md5_mismatch(tmp, md5)
                if mismatch:
                    raise ValueError(f"checksum mismatch ({mismatch})")
        except (OSError, ValueError, EOFError, http.client.HTTPException, zipfile.BadZipFile) as exc:
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
    for name, md5 in progress(source.files.items(), desc="download", unit="file"):
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


def given_user_data(data_path: str | Path) -> Path | None:
    """``data_path`` if it holds user data; None for a folder with nothing but README/hidden files.

    The default ``data/own`` ships with only a README, which means "not given".
    """
    path = Path(data_path)
    if path.is_dir() and not any(
        not p.name.startswith(".") and p.name.lower() != "readme.md" for p in path.iterdir()
    ):
        return None
    return path


def _copy_csv(path: Path, out_dir: Path) -> int:
    """The CSV as ``labels.csv`` plus every file it lists under ``files/``; returns files copied."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        try:
            reader = csv.DictReader(f)
            fieldnames, rows = reader.fieldnames, list(reader)
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ValueError(f"{path}: not a readable UTF-8 CSV of path,label ({exc})") from None
        lower = {(c or "").strip().lower(): c for c in fieldnames or []}
        if not {"path", "label"} <= set(lower):
            raise ValueError(f"{path}: a CSV data_path needs a header with columns path,label; "
                             f"it has {fieldnames}")
    (out_dir / "files").mkdir(parents=True)
    copied = 0
    with open(out_dir / CSV_NAME, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for i, row in enumerate(rows):
            listed = (row[lower["path"]] or "").strip()
            source = Path(listed) if Path(listed).is_absolute() else path.parent / listed
            if listed and source.is_file():
                listed = f"files/{i:06d}-{source.name}"
                shutil.copyfile(source, out_dir / listed)
                copied += 1
            writer.writerow([listed, (row[lower["label"]] or "").strip()])  # a missing file is reported by prepare
    return copied


def copy_user_data(path: Path, out_dir: str | Path, hint: str = "") -> str:
    """Snapshot the user's images into ``out_dir`` (DVC then versions them); say what was copied.

    A folder goes to ``images/``, an archive is copied as it is (after every
    member passed the safety check), a CSV becomes ``labels.csv`` plus ``files/``.
    """
    out_dir = Path(out_dir)
    if not path.exists():
        raise FileNotFoundError(f"data_path: {path} does not exist. {hint}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        check_links(path)  # refuses links that leave the folder before anything is copied
        shutil.copytree(path, out_dir / USER_FOLDER, ignore=shutil.ignore_patterns(".*", "__MACOSX"))
        return f"folder {path}"
    if path.suffix.lower() == ".csv":
        return f"{_copy_csv(path, out_dir)} files listed in {path}"
    if not (is_archive(path) or zipfile.is_zipfile(path)):
        raise ValueError(f"data_path: {path} is neither a folder, a .zip/.tar archive nor a .csv file. {hint}")
    with open_tree(path):  # refuses unsafe or unreadable archives before anything is copied
        pass
    shutil.copyfile(path, out_dir / path.name)
    return f"archive {path}"

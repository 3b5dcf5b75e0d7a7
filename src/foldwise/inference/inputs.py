"""The images to classify: files, folders (recursively), zip/tar archives and CSVs of paths, in order.

Each input becomes ``Item``s: a name for the output row, and either a way to read the file's bytes
(capped at prepare's ``MAX_FILE_BYTES``) or the reason it is skipped. A symbolic link in a folder
is followed only when it stays inside that folder: one that leaves it, dangles or names a folder
is listed with its own reason and never opened. Nothing is read until a batch needs it, so a
folder larger than memory streams.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foldwise.core.errors import UserError
from foldwise.data.archives import READ_ERRORS, DamagedMember, FileTree, is_archive, open_tree
from foldwise.data.images import MAX_FILE_BYTES, Size, SkipImage, decode

# Reasons of our own, beside prepare's (data.images.REASONS): files predict will not open.
LINK_OUT = "link outside the folder"
LINK_BROKEN = "broken link"
LINK_DIR = "link to a folder"
UNREADABLE = "unreadable"  # permissions, a vanished file: the OS error is in the detail
PATH_COLUMN = "path"  # a CSV input lists its images in this column (or its only column)


@dataclass
class Item:
    """One row of the output: ``name`` as the user will recognise it, and ``read`` (the bytes, at
    most ``MAX_FILE_BYTES`` + 1; ``SkipImage`` when unusable) or ``reason`` (skipped without reading)."""

    name: str
    read: Callable[[], bytes] | None = None
    reason: str = ""


def _read_file(path: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > MAX_FILE_BYTES:
                    raise SkipImage("too large", f"{size} bytes, more than {MAX_FILE_BYTES}")
                return f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise SkipImage(UNREADABLE, exc.strerror or str(exc)) from None
    return read


def _link_reason(path: Path, inside: Path) -> str:
    """'' when the link ``path`` may be followed (a file inside ``inside``), else why not."""
    target = path.resolve()
    if not target.is_relative_to(inside):
        return LINK_OUT
    if not target.exists():
        return LINK_BROKEN
    return LINK_DIR if target.is_dir() else ""


def _folder(root: Path) -> Iterator[Item]:
    inside = root.resolve()
    for folder, dirnames, filenames in os.walk(root):  # never follows a link to a folder
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # hidden: not inputs, as in prepare
        for name in sorted(dirnames + [f for f in filenames if not f.startswith(".")]):
            path = Path(folder) / name
            if name in dirnames and not path.is_symlink():
                continue  # a real folder: walked, not listed
            reason = _link_reason(path, inside) if path.is_symlink() else ""
            yield Item(str(path), reason=reason) if reason else Item(str(path), _read_file(path))


def _archive(path: Path) -> Iterator[Item]:
    try:
        tree = open_tree(path)
    except (ValueError, *READ_ERRORS) as exc:  # unsafe (links, '..'), or not readable at all
        yield Item(str(path), reason="corrupt" if not isinstance(exc, ValueError) else f"refused archive: {exc}")
        return
    # left open: its members are read a window later, after this generator has moved on (the file
    # handle goes with the last item that refers to it)
    for name, size in list(tree.files.items()):
        if size > MAX_FILE_BYTES:
            yield Item(f"{path}/{name}", reason="too large")
            continue
        yield Item(f"{path}/{name}", _read_member(tree, name))


def _read_member(tree: FileTree, name: str) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            return tree.read(name, MAX_FILE_BYTES)
        except DamagedMember as exc:  # bad CRC or compression: prepare's reason too
            raise SkipImage("corrupt", str(exc)) from None
    return read


def _csv(path: Path) -> Iterator[Item]:
    """The images a CSV lists: its ``path`` column, or its only column (with or without a header),
    relative to the CSV's folder; read row by row, so a list of millions streams too."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise UserError(f"{path}: an empty CSV; list one image path per row, under a header '{PATH_COLUMN}'")
        if PATH_COLUMN in header:
            column, first = header.index(PATH_COLUMN), []
        elif len(header) == 1:  # one column: its first row is a header unless it names a file
            column, first = 0, [header] if (path.parent / header[0]).exists() else []
        else:
            raise UserError(f"{path}: no '{PATH_COLUMN}' column among {header}; name the column of image "
                            f"paths '{PATH_COLUMN}'")
        for row in (*first, *reader) if first else reader:
            if len(row) <= column or not row[column].strip():
                continue
            image = Path(row[column].strip())
            yield from _one(image if image.is_absolute() else path.parent / image, top=False)


def _one(path: Path, top: bool) -> Iterator[Item]:
    if path.is_dir():
        yield from _folder(path)
    elif not path.exists() and not path.is_symlink():
        if top:
            raise UserError(f"{path} does not exist; give image files, folders, .zip/.tar archives or a CSV of paths")
        yield Item(str(path), reason="missing")
    elif top and path.suffix.lower() == ".csv":
        yield from _csv(path)
    elif is_archive(path):
        yield from _archive(path)
    else:
        yield Item(str(path), _read_file(path))


def decode_job(job: tuple[bytes | None, str], channels: int, size: Size) -> np.ndarray | str:
    """Pixels of one file (its bytes, or None and the reason it was skipped), or why it is skipped:
    a decoding process's task. Here, not beside the model: a process that imports this module
    imports Pillow and NumPy, not torch (a second or two per process)."""
    data, reason = job
    if data is None:
        return reason
    try:
        return decode(data, channels, size)
    except SkipImage as skip:
        return skip.reason


def collect(inputs: list[str | Path]) -> Iterator[Item]:
    """Every image of ``inputs`` (files, folders, archives, CSVs of paths) as ``Item``s, in order;
    a ``UserError`` for an input that does not exist."""
    for given in inputs:
        yield from _one(Path(given), top=True)

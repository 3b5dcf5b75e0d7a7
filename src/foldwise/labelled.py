"""Find the labelled image files in a file tree: by class folder, by file-name pattern, or by CSV.

A listing only names files and their classes; nothing is decoded here.
Files that cannot be given a class are listed as skipped with a reason, so
prepare's report accounts for every file in the tree.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from foldwise.archives import FileTree

CSV_NAME = "labels.csv"  # where the download stage puts a user's CSV


@dataclass
class Listing:
    """Files with their class names, every class seen (even empty), and files left out."""

    files: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    classes: set[str] = field(default_factory=set)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def add(self, name: str, label: str) -> None:
        self.files.append(name)
        self.labels.append(label)
        self.classes.add(label)


def _common_root(tree: FileTree) -> str:
    """The single folder wrapping everything (``PetImages/`` in ``PetImages/Cat/1.jpg``), or ''."""
    root = ""
    while True:
        prefix = f"{root}/" if root else ""
        tops = {PurePosixPath(n[len(prefix):]).parts[0] for n in tree.files}
        tops |= {PurePosixPath(d[len(prefix):]).parts[0] for d in tree.dirs if d.startswith(prefix) and d != root}
        loose = [n for n in tree.files if "/" not in n[len(prefix):]]
        if len(tops) != 1 or loose:
            return root
        only = prefix + tops.pop()
        subfolders = {d for d in tree.dirs if d.startswith(only + "/") and "/" not in d[len(only) + 1:]}
        if len(subfolders) < 2:
            return root
        root = only


def by_class_folder(tree: FileTree) -> Listing:
    """``<class>/<...>/file`` (torchvision ImageFolder layout); one wrapping folder is ignored."""
    root = _common_root(tree)
    prefix = f"{root}/" if root else ""
    listing = Listing()
    listing.classes = {
        d[len(prefix):] for d in tree.dirs if d.startswith(prefix) and d != root and "/" not in d[len(prefix):]
    }
    for name in tree.files:
        rel = name[len(prefix):]
        if "/" not in rel:
            listing.skipped.append((name, "not in a class folder"))
        else:
            listing.add(name, rel.split("/", 1)[0])
    return listing


def compile_pattern(pattern: str, key: str = "label_pattern") -> re.Pattern[str]:
    """A regex with a group that captures the class; errors name ``key`` and give an example."""
    example = r"e.g. '^(cat|dog)\.' for cat.12.jpg, or '^(?P<label>[a-z]+)_\d+' for beach_3.png"
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{key}: {pattern!r} is not a valid regular expression ({exc}); {example}") from None
    if regex.groups < 1:
        raise ValueError(f"{key}: {pattern!r} needs a group that captures the class name; {example}")
    return regex


def by_pattern(tree: FileTree, pattern: str | re.Pattern[str]) -> Listing:
    """Class = the ``label`` group (or the first group) of ``pattern`` searched in each file's name."""
    regex = compile_pattern(pattern) if isinstance(pattern, str) else pattern
    group = "label" if "label" in regex.groupindex else 1
    listing = Listing()
    for name in tree.files:
        match = regex.search(PurePosixPath(name).name)
        if match and match.group(group):
            listing.add(name, match.group(group))
        else:
            listing.skipped.append((name, "name does not match label_pattern"))
    return listing


def by_csv(tree: FileTree, csv_name: str = CSV_NAME) -> Listing:
    """Rows ``path,label`` of a CSV in the tree; paths are relative to the tree."""
    text = tree.read(csv_name).decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    if not {"path", "label"} <= set(columns):
        raise ValueError(f"{csv_name}: needs a header with columns path,label; it has {reader.fieldnames}")
    listing = Listing()
    for row in reader:
        row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
        path, label = row["path"], row["label"]
        if not label:
            listing.skipped.append((path, "no label in the CSV"))
        elif path not in tree.files:
            listing.skipped.append((path, "missing file"))
        else:
            listing.add(path, label)
    return listing

"""File sources: find the labelled image files in a tree (class folders, file-name pattern, CSV).

A listing only names files and their classes; nothing is decoded here
(prepare decodes each file once and skips the unusable ones). Files that
cannot be given a class are listed as skipped with a reason, so prepare's
report accounts for every file in the tree. ``read_folder`` and
``read_dogs_vs_cats`` are the readers of the registry entries built on this.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from foldwise.core.params import compile_pattern
from foldwise.data.archives import FileTree, open_tree

CSV_NAME = "labels.csv"  # where the download stage puts a user's CSV
USER_FOLDER = "images"  # where the download stage copies a user's folder inside data/raw/<dataset>/


@dataclass
class FileImages:
    """Labelled files in a tree, not yet decoded (``names[i]`` has class index ``labels[i]``)."""

    tree: FileTree
    names: list[str]
    labels: np.ndarray


@dataclass
class RawData:
    """What a source's reader found: classes, splits (arrays or files), files it left out."""

    classes: tuple[str, ...]
    splits: dict[str, tuple[np.ndarray, np.ndarray] | FileImages]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def close(self) -> None:
        for split in self.splits.values():
            if isinstance(split, FileImages):
                split.tree.close()


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
    """Rows of the ``path,label`` CSV the download stage wrote (it checked and normalised the user's)."""
    fix = "re-run the download stage (dvc repro --force download)"
    try:
        reader = csv.DictReader(io.StringIO(tree.read(csv_name).decode("utf-8"), newline=""))
        fieldnames, rows = reader.fieldnames, list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{csv_name}: not the CSV the download stage writes ({exc}); {fix}") from None
    if fieldnames != ["path", "label"]:
        raise ValueError(f"{csv_name}: expected the header path,label, found {fieldnames}; {fix}")
    listing = Listing()
    for row in rows:
        path, label = row["path"], row["label"]  # a short row's label is None: no label
        if not label:
            listing.skipped.append((path, "no label in the CSV"))
        elif path not in tree.files:
            listing.skipped.append((path, "missing file"))
        else:
            listing.add(path, label)
    return listing


def _user_tree(folder: Path) -> FileTree:
    """The tree the download stage left: a copied folder, or one archive, or a CSV and its files."""
    if (folder / CSV_NAME).is_file():
        return open_tree(folder)  # labels.csv + files/
    if (folder / USER_FOLDER).is_dir():
        return open_tree(folder / USER_FOLDER)
    archives = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if len(archives) != 1:
        raise ValueError(f"{folder}: expected one archive or an {USER_FOLDER}/ folder, found {len(archives)} files; "
                         f"re-run the download stage (dvc repro --force download)")
    return open_tree(archives[0])


def _encode(tree: FileTree, listing: Listing, classes: tuple[str, ...]) -> RawData:
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[label] for label in listing.labels], dtype=np.int64)
    # A class with no files (an empty folder) stays in: prepare drops and reports every empty class.
    return RawData(classes, {"train": FileImages(tree, listing.files, labels)}, listing.skipped)


def read_folder(folder: Path, label_pattern: str = "") -> RawData:
    """Your images: ``<class>/`` folders, a flat folder named by ``label_pattern``, or a CSV."""
    tree = _user_tree(folder)
    if (folder / CSV_NAME).is_file():
        listing = by_csv(tree)
    elif label_pattern:
        listing = by_pattern(tree, label_pattern)
    else:
        listing = by_class_folder(tree)
    if not listing.files:
        layout = f"file names matching label_pattern {label_pattern!r}" if label_pattern else "<class>/ folders"
        tree.close()
        raise ValueError(f"{tree.where}: no labelled files found (expected {layout}); "
                         f"{len(listing.skipped)} files were left out, e.g. {listing.skipped[:3]}")
    return _encode(tree, listing, tuple(sorted(listing.classes)))


KAGGLE_NAME = compile_pattern(r"(?i)^(cat|dog)\.\d+\.jpe?g$")  # train.zip: train/cat.123.jpg


def read_dogs_vs_cats(folder: Path, _label_pattern: str = "") -> RawData:
    """Kaggle's train.zip (class in the file name) or Microsoft's PetImages (Cat/ and Dog/ folders)."""
    tree = _user_tree(folder)
    if any(KAGGLE_NAME.search(PurePosixPath(n).name) for n in tree.files):
        listing = by_pattern(tree, KAGGLE_NAME)
    else:
        listing = by_class_folder(tree)
    pets = Listing(skipped=list(listing.skipped))
    for name, label in zip(listing.files, listing.labels):
        if label.lower() in ("cat", "dog"):
            pets.add(name, label.lower())
        else:
            pets.skipped.append((name, "not a cat or dog folder"))
    if not pets.files:
        tree.close()
        raise ValueError(
            f"{tree.where}: neither Dogs vs. Cats layout found: expected Kaggle's train.zip "
            f"(train/cat.0.jpg, train/dog.0.jpg) or Microsoft's PetImages (PetImages/Cat/0.jpg, "
            f"PetImages/Dog/0.jpg). Kaggle's test1.zip has no labels and cannot be used."
        )
    return _encode(tree, pets, ("cat", "dog"))

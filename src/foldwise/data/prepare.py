"""Reorganise a dataset into ``{train,valid,test}/<class>/<id>.png`` plus a manifest and a report.

The train/valid split (and the test split, for sources without one) is
stratified and seeded, so the same params always give the same files; a
source's own test set stays ``test``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from foldwise.core.progress import progress
from foldwise.data.archives import DamagedMember
from foldwise.data.images import MAX_FILE_BYTES, Size, SkipImage, convert_array, decode
from foldwise.data.layout import CLASSES, MANIFEST, PIXELS
from foldwise.data.sources import FileImages, RawData, Splits

REPORT = "report.json"  # images per split, skipped files per reason, empty classes
SKIPPED = "skipped.csv"  # every skipped file and why
PIXELS_MAX_BYTES = 1 << 30  # larger splits are only PNGs (streamed or decoded when needed)


def class_dirname(name: str) -> str:
    """A readable folder name for a class: ``T-shirt/top`` -> ``T-shirt_top``."""
    cleaned = re.sub(r"[^\w.\- ]+", "_", name).strip(" ._")
    if not cleaned:
        raise ValueError(f"class name {name!r} has no usable characters for a folder name")
    return cleaned


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of a class-balanced random subset of ``size`` items (all if fewer)."""
    if size <= 0 or size >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split  # 1.2 s to import: every stage reads our constants

    keep, _ = train_test_split(
        np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed
    )
    return np.sort(keep)


def carve_split(labels: np.ndarray, size: float, seed: int, key: str = "valid_size") -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded indices of (rest, carved); ``size`` int = count, float = fraction.

    A fraction rounds to the nearest image (1/6 of 60,000 is 10,000 exactly,
    where scikit-learn's own rounding would take 10,001 for 0.16667), and the
    count is what scikit-learn splits, so a fraction and its count carve the
    same images. ``key`` names the param in errors.
    """
    n = len(labels)
    count = size if isinstance(size, int) else math.floor(size * n + 0.5)  # a half rounds up
    if count >= n:
        raise ValueError(
            f"{key}={size} leaves no training images: the set it is carved from has {n}; "
            f"use a smaller count or a fraction such as 0.2"
        )
    if count < 1:
        raise ValueError(f"{key}={size} carves no image out of {n}; use a larger fraction or a count >= 1")
    from sklearn.model_selection import train_test_split

    try:
        rest, carved = train_test_split(np.arange(n), test_size=count, stratify=labels, random_state=seed)
    except ValueError as exc:  # e.g. fewer images than classes in the carved part
        raise ValueError(f"{key}={size} cannot be split stratified from {n} images: {exc}") from None
    return np.sort(rest), np.sort(carved)


def _save_png(pixels: np.ndarray, path: Path) -> None:
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    image.save(path, compress_level=1)  # pragma: no mutate (the level changes size and speed, never pixels)


def _md5(pixels: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(pixels).tobytes()).hexdigest()


@dataclass
class _Part:
    """One source split, ready to write: labels, original names, and how to write image ``i``."""

    labels: np.ndarray
    names: list[str]
    # (index, destination) -> md5 of the pixels written, and the pixels (H x W x C) when they are
    # at hand without decoding again (None: files staged on disk)
    write: Callable[[int, Path], tuple[str, np.ndarray | None]]


def _array_part(split: str, images: np.ndarray, labels: np.ndarray, channels: int, size: Size) -> _Part:
    def write(i: int, dest: Path) -> tuple[str, np.ndarray]:
        pixels = convert_array(images[i], channels or images.shape[-1], size)
        _save_png(pixels, dest)
        return _md5(pixels), pixels

    return _Part(np.asarray(labels), [f"{split}:{i}" for i in range(len(labels))], write)


def _staged_part(files: FileImages, staging: Path, channels: int, size: Size,
                 skipped: list[tuple[str, str]]) -> _Part:
    """Decode every file once into ``staging`` (skipping unusable ones); writing is then a rename."""
    staging.mkdir(parents=True, exist_ok=True)  # pragma: no mutate (a fresh folder: exist_ok never matters)
    kept, md5s, first = [], [], None  # md5s[j] is of the image kept[j]
    for i, name in enumerate(progress(files.names, desc="decode", unit="img")):
        if files.tree.files.get(name, 0) > MAX_FILE_BYTES:  # the size listed: nothing read
            skipped.append((name, "too large"))
            continue
        try:
            pixels = decode(files.tree.read(name, MAX_FILE_BYTES), channels or 3, size)
        except SkipImage as skip:
            skipped.append((name, skip.reason))
            continue
        except DamagedMember:  # archive member damaged (CRC, compression)
            skipped.append((name, "corrupt"))
            continue
        if first is None:
            first = (name, pixels.shape)
        elif pixels.shape != first[1]:
            raise ValueError(
                f"images differ in size: {name} is {pixels.shape[1]}x{pixels.shape[0]} but {first[0]} is "
                f"{first[1][1]}x{first[1][0]} (width x height); set image_size in params.yaml, e.g. "
                f"64 (shorter side to 64, then centre crop) or [64, 64] (stretch to exactly 64x64)"
            )
        _save_png(pixels, staging / f"{i}.png")
        kept.append(i)
        md5s.append(_md5(pixels))
    def write(j: int, dest: Path) -> tuple[str, None]:
        os.replace(staging / f"{kept[j]}.png", dest)
        return md5s[j], None

    return _Part(files.labels[kept], [files.names[i] for i in kept], write)


def _drop_empty_classes(parts: dict[str, _Part], classes: tuple[str, ...]) -> tuple[tuple[str, ...], list[str]]:
    """Remove classes no split has an image of (all files unreadable, or an empty folder)."""
    counts = np.bincount(np.concatenate([p.labels for p in parts.values()]), minlength=len(classes))
    keep = [c for c in range(len(classes)) if counts[c] > 0]
    empty = [classes[c] for c in range(len(classes)) if counts[c] == 0]
    if len(keep) < 2:
        raise ValueError(
            f"only {len(keep)} class(es) have usable images ({[classes[c] for c in keep]}); a classifier "
            f"needs at least 2. See the skipped files above, or add images of other classes."
        )
    if empty:
        remap = np.full(len(classes), -1)  # pragma: no mutate (dropped classes have no labels to map)
        remap[keep] = np.arange(len(keep))
        for part in parts.values():
            part.labels = remap[part.labels]
    return tuple(classes[c] for c in keep), empty


def prepare(
    data: RawData | Splits,
    classes: tuple[str, ...],
    out_dir: str | Path,
    valid_size: float,
    max_images_per_split: int,
    seed: int,
    test_size: float = 0.2,
    channels: int = 0,
    image_size: Size = 0,
) -> pd.DataFrame:
    """Write the image tree, ``manifest.csv``, ``classes.json`` and ``report.json``; return the manifest.

    The manifest's ``md5`` column hashes each image's pixels, so the manifest
    changes whenever any image does: later stages can depend on it alone
    instead of on 70,000 files (DVC checks one file instead of all of them).

    Files that are not usable images are skipped and counted per reason in
    ``report.json`` (listed in ``skipped.csv``); classes left without images
    are dropped and named there. ``channels`` (0 = the source's own; files
    default to RGB) and ``image_size`` convert every image.

    A source without a test split gets one of ``test_size`` carved out of its
    train split first; then ``valid_size`` is carved out of what remains.
    ``max_images_per_split`` > 0 then keeps a stratified subset of that size
    per split (smoke runs and tests).
    """
    out_dir = Path(out_dir)
    raw = data if isinstance(data, RawData) else RawData(classes, dict(data))
    skipped = list(raw.skipped)
    parts: dict[str, _Part] = {}
    for split, content in raw.splits.items():
        if isinstance(content, FileImages):
            parts[split] = _staged_part(content, out_dir / ".staging" / split, channels, image_size, skipped)
        else:
            parts[split] = _array_part(split, *content, channels, image_size)
    classes, empty = _drop_empty_classes(parts, raw.classes)

    train = parts["train"]
    if "test" in parts:
        pool = np.arange(len(train.labels))
        test = (parts["test"], np.arange(len(parts["test"].labels)))
    else:
        pool, test_idx = carve_split(train.labels, test_size, seed, "test_size")
        test = (train, test_idx)
    rest, valid = carve_split(train.labels[pool], valid_size, seed, "valid_size")
    chosen = {"train": (train, pool[rest]), "valid": (train, pool[valid]), "test": test}
    dirs = [class_dirname(c) for c in classes]
    if len(set(dirs)) != len(dirs):
        raise ValueError(f"class names {classes} collide as folder names {dirs}")
    rows = []
    for split, (part, idx) in chosen.items():
        idx = idx[stratified_subset(part.labels[idx], max_images_per_split, seed)]
        for d in dirs:
            (out_dir / split / d).mkdir(parents=True, exist_ok=True)  # pragma: no mutate (as staging)
        origin = "test" if part is parts.get("test") else "train"
        pixels: list[np.ndarray] | None = []  # None: not kept (staged files, or too large)
        # Sequential on purpose: measured faster than threads or processes on 2
        # cores for 28x28 images (the GIL and process start-up cost more than they save).
        for i in progress(idx, desc=f"prepare {split}", unit="img"):
            label = int(part.labels[i])
            rel = f"{split}/{dirs[label]}/{origin}-{i:05d}.png"
            md5, image = part.write(i, out_dir / rel)
            rows.append((rel, label, classes[label], split, md5, part.names[i]))
            if pixels is not None and image is not None and image.nbytes * len(idx) <= PIXELS_MAX_BYTES:
                pixels.append(image)
            else:  # stop holding images the array would not take anyway (e.g. resized large)
                pixels = None  # pragma: no mutate ("" is as falsy: a split over the limit stays over)
        if pixels:
            _write_pixels(out_dir / PIXELS.format(split=split), pixels)
    shutil.rmtree(out_dir / ".staging", ignore_errors=True)
    manifest = pd.DataFrame(rows, columns=["path", "label", "class", "split", "md5", "source"])
    manifest.to_csv(out_dir / MANIFEST, index=False)
    (out_dir / CLASSES).write_text(json.dumps(list(classes), indent=2) + "\n")
    _write_report(out_dir, manifest, skipped, empty)
    return manifest


def _write_pixels(path: Path, pixels: list[np.ndarray]) -> None:
    """The split's images as one uint8 N x C x H x W array in manifest order, so later stages load
    them in a fraction of a second instead of decoding every PNG again (3-14 s for 60,000
    28x28 images). Not written for staged files or splits over ``PIXELS_MAX_BYTES``."""
    array = np.ascontiguousarray(np.stack(pixels).transpose(0, 3, 1, 2))
    np.save(path, array, allow_pickle=False)  # pragma: no mutate (uint8 arrays never pickle)


def _write_report(out_dir: Path, manifest: pd.DataFrame, skipped: list[tuple[str, str]], empty: list[str]) -> None:
    with Image.open(out_dir / manifest["path"].iloc[0]) as im:  # pragma: no mutate (all images share one shape)
        width, height = im.size
        channels = len(im.getbands())
    reasons = pd.Series([r for _, r in skipped], dtype=object).value_counts()
    report = {
        "images": {s: int(n) for s, n in manifest.groupby("split").size().items()},
        "classes": int(manifest["label"].nunique()),
        "shape": [channels, height, width],
        "skipped": {"total": len(skipped), **{str(k): int(v) for k, v in reasons.items()}},
        "empty_classes": empty,
    }
    (out_dir / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    pd.DataFrame(skipped, columns=["file", "reason"]).to_csv(out_dir / SKIPPED, index=False)

"""`foldwise predict` on real files: a messy folder, archives, CSVs of paths, many images through the
worker pool, JSON, and one-line errors for what cannot be predicted at all."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from foldwise.data.images import decode
from foldwise.inference.cli import main
from foldwise.inference.inputs import LINK_BROKEN, LINK_DIR, LINK_OUT, collect
from foldwise.inference.predict import predict_items
from foldwise.inference.predictor import FILE
from tests.conftest import CLASSES, jpeg_bytes


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def photo(size: tuple[int, int] = (40, 30), seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def messy_folder(root: Path, outside: Path) -> dict[str, str]:
    """Files users have, and what predict must say of each ('' = predicted)."""
    root.mkdir()
    rotated = photo((40, 20))
    exif = rotated.getexif()
    exif[0x0112] = 6  # EXIF: rotate 90 degrees clockwise
    files = {
        "exif.jpg": encode(rotated, "JPEG", exif=exif),
        "alpha.png": encode(Image.new("RGBA", (30, 30), (200, 10, 10, 0))),
        "sixteen.png": encode(Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16))),
        "cmyk.jpg": encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"),
        "anim.gif": encode(photo().convert("P"), "GIF"),
        "photo.webp": encode(photo(), "WEBP"),
        "nested/deeper/grey.png": encode(Image.new("L", (12, 12), 90)),
        "truncated.jpg": jpeg_bytes(120)[:300],
        "empty.png": b"",
        "notes.txt": b"not a picture\n",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / ".hidden.png").write_bytes(files["alpha.png"])  # hidden files are not inputs, as in prepare
    outside.write_bytes(files["alpha.png"])
    os.symlink(outside, root / "link-out.png")
    os.symlink(root / "alpha.png", root / "link-in.png")
    os.symlink(root / "gone.png", root / "dangling.png")
    os.symlink(root / "nested", root / "link-dir")
    expected = {name: "" for name in files}
    expected.update({"truncated.jpg": "truncated", "empty.png": "empty file", "notes.txt": "not an image",
                     "link-out.png": LINK_OUT, "link-in.png": "", "dangling.png": LINK_BROKEN, "link-dir": LINK_DIR})
    return expected


def rows_of(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def test_a_messy_folder_gets_a_row_per_file_and_exit_0(tmp_path, predictor_dir, predictor, capsys):
    folder = tmp_path / "messy"
    expected = messy_folder(folder, tmp_path / "secret.png")
    assert main(["predict", str(folder), "--predictor", str(predictor_dir), "--out", str(tmp_path / "p.csv")]) == 0
    rows = rows_of(tmp_path / "p.csv")
    assert {Path(p).relative_to(folder).as_posix(): r["skipped"] for p, r in rows.items()} == expected
    for name, reason in expected.items():
        row = rows[str(folder / name)]
        assert (row["predicted"] in CLASSES) == (reason == "")
    # a colour file for a greyscale model is converted as prepare converts it, then predicted
    pixels = decode((folder / "photo.webp").read_bytes(), 1, 12)
    log_probs = predictor.log_probs(torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy()))
    row = rows[str(folder / "photo.webp")]
    assert row["predicted"] == CLASSES[int(log_probs.argmax())]
    assert float(row["probability"]) == round(float(log_probs.max().exp()), 6)
    assert [row[f"top{k}"] for k in (1, 2, 3)] == [CLASSES[i] for i in log_probs[0].argsort(descending=True)]
    err = capsys.readouterr().err
    assert f"classified {list(expected.values()).count('')} images; skipped 6 (" in err
    assert f"{LINK_OUT}: 1" in err and "truncated: 1" in err


def test_archives_and_csvs_of_paths(tmp_path, predictor_dir):
    images = {f"c{i}.png": encode(photo((14, 14), i)) for i in range(3)}
    with zipfile.ZipFile(tmp_path / "some.zip", "w") as z:
        for name, data in images.items():
            z.writestr(f"inside/{name}", data)
        z.writestr("inside/readme.txt", b"hello")
    with tarfile.open(tmp_path / "some.tar.gz", "w:gz") as t:
        for name, data in images.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    (tmp_path / "pics").mkdir()
    for name, data in images.items():
        (tmp_path / "pics" / name).write_bytes(data)
    (tmp_path / "list.csv").write_text("path,note\npics/c0.png,a\npics/c2.png,b\npics/missing.png,c\n")
    out = tmp_path / "p.json"
    assert main(["predict", str(tmp_path / "some.zip"), str(tmp_path / "some.tar.gz"), str(tmp_path / "list.csv"),
                 "--predictor", str(predictor_dir), "--json", "--top-k", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [Path(r["path"]).relative_to(tmp_path).as_posix() for r in rows] == [
        *(f"some.zip/inside/{n}" for n in [*images, "readme.txt"]), *(f"some.tar.gz/{n}" for n in images),
        "pics/c0.png", "pics/c2.png", "pics/missing.png"]
    by = {Path(r["path"]).name: r for r in rows}
    assert by["readme.txt"]["skipped"] == "not an image" and by["missing.png"]["skipped"] == "missing"
    assert set(rows[0]) == {"path", "predicted", "probability", "top1", "top1_probability", "top2",
                            "top2_probability", "skipped"}
    # the same image gives the same row wherever it comes from
    same = [r for r in rows if Path(r["path"]).name == "c0.png"]
    assert len(same) == 3 and len({(r["predicted"], r["probability"]) for r in same}) == 1


def test_decoding_moves_to_worker_processes_when_it_pays_and_gives_the_same_rows(tmp_path, predictor):
    photos, icons = tmp_path / "photos", tmp_path / "icons"
    for folder in (photos, icons):
        folder.mkdir()
    for i in range(40):  # decoding a 600 x 450 JPEG takes milliseconds: a pool of processes pays
        (photos / f"{i:03d}.jpg").write_bytes(encode(photo((600, 450), i).resize((600, 450)), "JPEG"))
    (photos / "bad.jpg").write_bytes(b"\xff\xd8\xff broken")
    for i in range(40):  # a 20 x 16 PNG decodes in microseconds: shipping it to a process costs more
        (icons / f"{i:03d}.png").write_bytes(encode(photo((20, 16), i)))

    def rows(folder: Path, workers: int) -> tuple[list[dict], int]:
        stream = predict_items(collect([folder]), predictor.log_probs, predictor.classes, predictor.channels,
                               predictor.size, workers=workers)
        first = next(stream)  # the first window is decoded: the pool, if any, is running
        children = len(multiprocessing.active_children())
        return [first, *stream], children

    serial, none = rows(photos, 0)
    pooled, two = rows(photos, 2)
    assert none == 0 and two == 2 and pooled == serial
    assert serial[-1]["skipped"] == "corrupt" and serial[0]["predicted"] in CLASSES
    assert rows(icons, 2)[1] == 0


@pytest.mark.parametrize("case", ["empty folder", "missing input", "damaged predictor", "no predictor", "top-k"])
def test_what_cannot_be_predicted_is_one_line_and_exit_1(tmp_path, predictor_dir, capsys, case):
    (tmp_path / "empty").mkdir()
    image = tmp_path / "one.png"
    image.write_bytes(encode(photo()))
    args = {"empty folder": [str(tmp_path / "empty")], "missing input": [str(tmp_path / "nope.png")],
            "damaged predictor": [str(image)], "no predictor": [str(image), "--predictor", str(tmp_path / "none")],
            "top-k": [str(image), "--top-k", "0"]}[case]
    if case == "damaged predictor":
        (predictor_dir / FILE).write_bytes((predictor_dir / FILE).read_bytes()[:-10])
    if "--predictor" not in args:
        args += ["--predictor", str(predictor_dir)]
    assert main(["predict", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert {"empty folder": "no files in", "missing input": "nope.png does not exist",
            "damaged predictor": "is damaged", "no predictor": "no predictor there",
            "top-k": "--top-k 0"}[case] in err


def test_a_csv_without_a_path_column_is_one_line_and_a_single_column_works_with_or_without_header(
        tmp_path, predictor_dir, capsys):
    (tmp_path / "a.png").write_bytes(encode(photo((14, 14))))
    (tmp_path / "plain.csv").write_text("a.png\na.png\n")
    (tmp_path / "headed.csv").write_text("image\na.png\n")
    (tmp_path / "wide.csv").write_text("file,label\na.png,x\n")
    for name, rows in (("plain.csv", 2), ("headed.csv", 1)):
        assert main(["predict", str(tmp_path / name), "--predictor", str(predictor_dir),
                     "--out", str(tmp_path / "p.csv")]) == 0
        assert len(rows_of(tmp_path / "p.csv")) == 1 and len((tmp_path / "p.csv").read_text().splitlines()) == rows + 1
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "wide.csv"), "--predictor", str(predictor_dir)]) == 1
    assert "no 'path' column among ['file', 'label']; name the column of image paths 'path'" in capsys.readouterr().err

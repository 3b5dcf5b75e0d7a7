"""End to end: the pipeline on other datasets than Fashion-MNIST, each in a project of its own: README's
`dvc exp run -S dataset=digits` as written, and your own images from data/own and from a zip.

(A module of its own so that pytest-xdist can run it beside test_pipeline.py's Fashion-MNIST project.)
"""

from __future__ import annotations

import json

from tests.e2e.test_pipeline import ALL_STAGES, make_clone, ran_stages, run, set_params


def test_one_set_switches_to_digits_and_needs_no_network(tmp_path):
    """README's `dvc exp run -S dataset=digits`, as written: the defaults fit every dataset."""
    make_clone(tmp_path)
    out = run(tmp_path, "dvc", "exp", "run", "-S", "dataset=digits").stdout
    assert ran_stages(out) == ALL_STAGES
    manifest = (tmp_path / "data/prepared/manifest.csv").read_text().splitlines()
    assert len(manifest) == 1 + 1797  # every image in exactly one split
    splits = [line.rsplit(",", 3)[1] for line in manifest[1:]]
    # test_size 0.2 of 1,797 is 359; valid_size 1/6 of the remaining 1,438 is 240 (to the nearest image)
    assert {s: splits.count(s) for s in set(splits)} == {"train": 1198, "valid": 240, "test": 359}
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert json.loads((tmp_path / "reports/evaluate/provenance.json").read_text())["dataset"] == "digits"
    assert metrics["test"]["accuracy"] > 0.8
    per_class = (tmp_path / "reports/evaluate/per_class.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in per_class[1:]] == list("0123456789")


def test_own_images_in_data_own_then_a_zip_elsewhere(tmp_path):
    """dataset: folder through real DVC: DVC notices new images in data/own; a data_path zip replaces them."""
    from tests.conftest import jpeg_bytes, write_zip

    repo = tmp_path / "project"
    repo.mkdir()
    make_clone(repo)
    for c, brightness in (("dark", 40), ("light", 210)):
        (repo / "data/own" / c).mkdir(parents=True)
        for i in range(24):
            (repo / "data/own" / c / f"{i}.jpg").write_bytes(jpeg_bytes(brightness, size=(24, 18), seed=i))
    (repo / "data/own/dark/broken.jpg").write_bytes(b"")
    set_params(repo / "params.yaml", {"dataset": "folder", "image_size": "12", "valid_size": "0.2",
                                      "batch_size": "16", "epochs": "3", "k_folds": "2", "model": "softmax"})
    assert run(repo, "git", "status", "--porcelain", "data/own").stdout == ""  # images stay out of git
    out = run(repo, "dvc", "repro").stdout
    assert ran_stages(out) == ALL_STAGES
    assert '"empty file": 1' in out  # prepare's report, printed
    report = json.loads((repo / "data/prepared/report.json").read_text())
    assert report["shape"] == [3, 12, 12] and sum(report["images"].values()) == 48
    assert json.loads((repo / "reports/metrics.json").read_text())["test"]["accuracy"] == 1.0

    (repo / "data/own/light/24.jpg").write_bytes(jpeg_bytes(210, size=(24, 18), seed=24))
    status = run(repo, "dvc", "status", "download").stdout  # an added image is noticed
    assert "changed deps" in status and "data/own" in status, status

    write_zip(tmp_path / "elsewhere.zip", {f"shots/{c}/{i}.jpg": jpeg_bytes(v, size=(20, 20), seed=i)
                                           for c, v in (("night", 30), ("day", 220)) for i in range(20)})
    # as far as prepare: the stages after it read the prepared split, whatever its source
    out = run(repo, "dvc", "exp", "run", "-S", f"data_path={tmp_path / 'elsewhere.zip'}", "prepare").stdout
    assert ran_stages(out) == {"download", "prepare"}
    assert json.loads((repo / "data/prepared/classes.json").read_text()) == ["day", "night"]

"""Using the model, end to end on a reproduced digits project: `foldwise predict` gives evaluate's own
predictions, the ONNX export agrees with it, and `dvc artifacts get` fetches the predictor from a clone."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.e2e.test_pipeline import ran_stages, run, set_params

ROUNDING = 1.01e-6  # both sides write probabilities rounded to 6 decimals
NAMES = {c: str for c in ("actual", "predicted", "top1", "top2", "top3")}  # digits' classes are "0" to "9"


def evaluate_rows(repo: Path) -> pd.DataFrame:
    """evaluate's predictions.csv, indexed by each test image's path (the manifest's test order)."""
    manifest = pd.read_csv(repo / "data/prepared/manifest.csv").query("split == 'test'")
    paths = [str(Path("data/prepared") / p) for p in manifest["path"]]
    rows = pd.read_csv(repo / "reports/evaluate/predictions.csv", dtype=NAMES)
    assert len(rows) == len(paths)  # digits' test split is below the sampling bound: every image
    return rows.assign(path=[paths[i] for i in rows["index"]]).set_index("path")


def predict(repo: Path, *args: str) -> pd.DataFrame:
    done = run(repo, "foldwise", "predict", "data/prepared/test", "--out", "predicted.csv", *args)
    assert "classified" in done.stderr and "skipped 0" in done.stderr, done.stderr
    return pd.read_csv(repo / "predicted.csv", dtype=NAMES).set_index("path")


# digits forbid mirrored images (a flipped 2 is no 2): test-time flips need augment_flip: true, which
# trains again (crossval and train track it)
TTA = {"tta": "true", "augment_flip": "true"}


@pytest.mark.parametrize("settings", [{"ensemble": "true"}, {"ensemble": "false"}, TTA],
                         ids=["ensemble", "single", "tta"])
def test_predict_on_the_test_split_gives_evaluates_predictions(digits_copy, settings):
    set_params(digits_copy / "params.yaml", settings)
    ran = ran_stages(run(digits_copy, "dvc", "repro", "evaluate").stdout)
    assert ran == ({"crossval", "train", "evaluate"} if settings is TTA else {"evaluate"})
    used = json.loads((digits_copy / "reports/evaluate/comparison.json").read_text())["used"]
    assert json.loads((digits_copy / "models/predictor/predictor.json").read_text())["used"] == used
    if "ensemble" in settings:
        assert used == {"true": "ensemble", "false": "single"}[settings["ensemble"]]
    assert used.endswith("+tta") == ("tta" in settings)
    expected = evaluate_rows(digits_copy)
    got = predict(digits_copy).loc[expected.index]
    assert (got["predicted"] == expected["predicted"]).all()
    assert (got["probability"] - expected["calibrated_confidence"]).abs().max() <= ROUNDING
    assert (got["top1"] == got["predicted"]).all() and (got["top1_probability"] >= got["top2_probability"]).all()
    # the same command as a module
    again = run(digits_copy, "python", "-m", "foldwise", "predict", "data/prepared/test", "--json").stdout
    assert [row["predicted"] for row in json.loads(again)] == list(predict(digits_copy)["predicted"])


def test_onnx_export_agrees_with_the_predictor_and_predict_runs_it(digits_copy):
    check = json.loads((digits_copy / "reports/export.json").read_text())
    test_images = len(evaluate_rows(digits_copy))
    assert check["passed"] and check["images"] == check["argmax_agree"] == test_images
    assert check["max_abs_probability_difference"] <= 1e-4
    torch_rows, onnx_rows = predict(digits_copy), predict(digits_copy, "--onnx", "models/model.onnx")
    assert (onnx_rows["predicted"] == torch_rows["predicted"]).all()
    assert (onnx_rows["probability"] - torch_rows["probability"]).abs().max() <= 1e-4
    # the same predictor chosen for another reason (a new model card alone) exports nothing again
    used = json.loads((digits_copy / "models/predictor/predictor.json").read_text())["used"]
    set_params(digits_copy / "params.yaml", {"ensemble": "true" if used == "ensemble" else "false"})
    assert ran_stages(run(digits_copy, "dvc", "repro", "export").stdout) == {"evaluate"}
    assert "in params.yaml" in (digits_copy / "models/predictor/MODEL_CARD.md").read_text()


def test_artifacts_get_fetches_a_registered_version_of_the_predictor_and_onnx(digits_copy, tmp_path):
    """DVC's registry finds a model version by its git tag (GTO's ``<name>@v<semver>``); the files come
    from the project's cache (or its remote)."""
    user = tmp_path / "elsewhere"
    user.mkdir()
    missing = run(user, "dvc", "artifacts", "get", str(digits_copy), "predictor", ok=False)
    assert missing.returncode != 0 and "Unable to find artifact 'predictor'" in missing.stderr  # no version yet
    for name in ("predictor", "onnx"):
        run(digits_copy, "git", "tag", "-a", f"{name}@v1.0.0", "-m", f"the digits reference {name}")
    run(user, "dvc", "artifacts", "get", str(digits_copy), "predictor", "-o", "predictor")
    run(user, "dvc", "artifacts", "get", str(digits_copy), "onnx", "--rev", "v1.0.0", "-o", "model.onnx")
    assert sorted(p.name for p in (user / "predictor").iterdir()) == ["MODEL_CARD.md", "predictor.json", "predictor.pt"]
    assert (user / "model.onnx").read_bytes() == (digits_copy / "models/model.onnx").read_bytes()
    image = next((digits_copy / "data/prepared/test").rglob("*.png"))
    rows = run(user, "foldwise", "predict", str(image), "--predictor", "predictor").stdout
    onnx_rows = run(user, "foldwise", "predict", str(image), "--onnx", "model.onnx").stdout
    assert rows.splitlines()[1].split(",")[1] == onnx_rows.splitlines()[1].split(",")[1] != ""


def test_the_speed_benchmark_writes_every_table(digits_reference, tmp_path):
    """benchmarks/predict.py in a reduced mode on the digits project, so that it cannot rot."""
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "predict.md"
    subprocess.run([sys.executable, "benchmarks/predict.py", "--predictor", str(digits_reference / "models/predictor"),
                    "--onnx", str(digits_reference / "models/model.onnx"), "--prepared",
                    str(digits_reference / "data/prepared"), "--rounds", "1", "--photos", "20", "--out", str(out)],
                   cwd=root, check=True, timeout=600, capture_output=True)
    text = out.read_text()
    found = re.findall(r"^\| ([^|]+?) \| [\d.]+ \| [\d,]+ \| ([\d.]+) \|$", text, re.M)
    rows = dict(found)
    assert len(found) == 11 and {"--workers 0", "1 process", "evaluate's batch path", "predict, torch",
                                 "predict, ONNX"} < set(rows)
    assert re.search(r"^\| --workers [1-9]\d* \|", text, re.M) and re.search(r"^\| [1-9]\d* processes \|", text, re.M)
    assert text.count("| path | median s | images/s |") == 5 and "Machine: " in text
    assert rows["evaluate's batch path"] == "1.00"

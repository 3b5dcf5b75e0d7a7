"""End to end: real `dvc` in a temporary git repo on a small subset of the real Fashion-MNIST.

Needs Debian's dataset-fashion-mnist (installed by `make test`) or
FOLDWISE_MIRROR pointing at a folder with the four official files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"max_images_per_split": "400", "epochs": "2", "batch_size": "32", "k_folds": "2"}
METRICS = ["reports/metrics.json", "reports/cv.json", "reports/train.json"]
ALL_STAGES = {"download", "prepare", "normalize", "crossval", "train", "evaluate", "export", "plots", "report"}
FIGURES = {"learning_curves.png", "cv_comparison.png", "confusion_matrix.png", "misclassified.png",
           "sample_predictions.png", "reliability.png"}


def run(repo: Path, *args: str, ok: bool = True, daemon: bool = False) -> subprocess.CompletedProcess:
    """``args`` in ``repo`` with DVC's and git's environment; its output, or AssertionError when it fails.

    ``daemon``: a command that leaves a process running (`dvc queue start`'s workers inherit its stdout
    and stderr). Its output goes to a file, not a pipe: reading a pipe to its end would wait for the
    workers to exit, and forever for one that never does (a celery worker can hang while shutting down).
    """
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(repo / "src"), "DVC_NO_ANALYTICS": "1", "FOLDWISE_DEVICE": "cpu",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    if daemon:
        with tempfile.TemporaryFile("w+") as log:
            done = subprocess.run(args, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                                  timeout=600)
            log.seek(0)
            done.stdout, done.stderr = log.read(), ""
    else:
        done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    if ok and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def set_params(path: Path, values: dict[str, str]) -> None:
    text = path.read_text()
    for key, value in values.items():
        text, count = re.subn(rf"^{key}: \S+", f"{key}: {value}", text, flags=re.M)
        assert count == 1, key
    path.write_text(text)


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


def tracked_files() -> list[str]:
    """What a fresh clone holds: git's tracked files (as in the working tree, so uncommitted edits count)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [name for name in listed.stdout.split("\0") if name and (ROOT / name).is_file()]


def make_clone(repo: Path) -> None:
    """Copy the tracked files into ``repo`` and commit them, as a fresh clone would have them."""
    for name in tracked_files():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    # what the set-up (make) adds: the offline `dvc plots` page template that .dvc/config names
    template = ROOT / ".foldwise/plots/offline.html"
    assert template.is_file(), "run `make test`: it writes the dvc plots template"
    (repo / template.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, repo / template.relative_to(ROOT))
    run(repo, "git", "init", "-q")
    # dvc exp run commits through its own git library: give the repo an identity
    run(repo, "git", "config", "user.name", "foldwise test")
    run(repo, "git", "config", "user.email", "test@foldwise.invalid")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "a fresh clone, with the reference run's metrics")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    if not Path("/usr/share/datasets/fashion-mnist").is_dir() and not os.environ.get("FOLDWISE_MIRROR"):
        pytest.fail("real Fashion-MNIST not found: run `make test` (installs dataset-fashion-mnist) "
                    "or set FOLDWISE_MIRROR to a folder with the four .gz files")
    repo = tmp_path_factory.mktemp("project")
    make_clone(repo)
    set_params(repo / "params.yaml", SMALL)
    run(repo, "git", "commit", "-qam", "small run")
    return repo


def stage_outputs(repo: Path) -> dict[str, list[str]]:
    """Per stage, the outputs dvc.yaml declares (outs, metrics, plots), as written by the stage itself."""
    import yaml

    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    entries = {name: [next(iter(e)) if isinstance(e, dict) else e
                      for key in ("outs", "metrics", "plots") for e in stage.get(key, [])]
               for name, stage in stages.items()}
    return {name: [o for o in outs if not o.startswith("reports/live/")]  # dvclive writes those
            for name, outs in entries.items()}


def test_repro_runs_the_whole_pipeline(repo):
    """...and the temporaries a killed run of any stage leaves (planted here, as a kill -9 leaves
    them) are git-ignored meanwhile and removed when that stage next starts."""
    planted = []
    for outs in stage_outputs(repo).values():
        for out in outs:
            leftover = repo / Path(out).parent / f".{Path(out).name}.tmp-k1ll3d"
            leftover.parent.mkdir(parents=True, exist_ok=True)
            leftover.write_text("half-written")
            planted.append(leftover)
    assert len(planted) >= 15
    assert ".tmp-" not in run(repo, "git", "status", "--porcelain", "--untracked-files=all").stdout
    out = run(repo, "dvc", "repro").stdout
    assert ran_stages(out) == ALL_STAGES
    assert [p for p in planted if p.exists()] == []
    assert sorted(p.name for p in (repo / "data/raw/fashion-mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    manifest = (repo / "data/prepared/manifest.csv").read_text().splitlines()
    assert len(manifest) == 1 + 3 * 400
    assert (repo / "data/prepared/train/T-shirt_top").is_dir()
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert len((repo / "reports/evaluate/per_class.csv").read_text().splitlines()) == 1 + 10
    provenance = json.loads((repo / "reports/evaluate/provenance.json").read_text())
    assert provenance["dataset"] == "fashion-mnist" and provenance["device"] == "cpu"
    cv = json.loads((repo / "reports/cv.json").read_text())
    assert set(cv["variants"]) >= {"baseline", "l2", "dropout"} and cv["chosen"] in cv["variants"]
    assert {p.name for p in (repo / "reports/figures").iterdir()} == FIGURES
    report = (repo / "reports/report.md").read_text()
    assert "| max_images_per_split | `400` | `0` |" in report  # the params this run changed
    used = json.loads((repo / "reports/evaluate/comparison.json").read_text())
    row = next(r for r in used["rows"] if r["name"] == used["used"])
    assert f"accuracy {row['accuracy']:.4f}" in report and "## Single model, fold ensemble, calibration" in report
    # the fold ensemble: crossval kept the chosen variant's K fold models, evaluate measured them
    folds = json.loads((repo / "models/folds/folds.json").read_text())
    assert list(folds["variants"]) == [cv["chosen"]] and len(folds["variants"][cv["chosen"]]) == 2
    assert sorted(p.name for p in (repo / "models/folds" / cv["chosen"]).iterdir()) == ["fold0.pt", "fold1.pt"]
    assert set(metrics) == {"test", "ensemble", "calibration"} and 0.3 < metrics["ensemble"]["accuracy"] <= 1
    assert 0 <= metrics["ensemble"]["mcnemar_p"] <= 1 and used["temperature"] > 0
    assert set(metrics["calibration"]) == {"ece_before", "ece"} and provenance["model_used"] == used["used"]
    assert (repo / "reports/evaluate/predictions.csv").read_text().startswith(
        "index,actual,predicted,calibrated_confidence\n")
    assert all(f"(figures/{name})" in report for name in FIGURES)


def test_metrics_diff_compares_with_the_committed_reference_run(repo):
    reference = json.loads(run(repo, "git", "show", "HEAD:reports/metrics.json").stdout)
    assert reference["test"]["accuracy"] >= 0.90  # the full default run README reports
    diff = run(repo, "dvc", "metrics", "diff").stdout
    row = next(line for line in diff.splitlines() if re.search(r"reports/metrics.json\s+test.accuracy\s", line))
    assert str(reference["test"]["accuracy"]) in row
    assert "reason" not in diff  # numbers only: the table stays readable


def test_second_repro_has_nothing_to_do(repo):
    out = run(repo, "dvc", "repro").stdout
    assert ran_stages(out) == set()
    assert "Data and pipelines are up to date." in out


def test_forced_rerun_changes_no_byte_of_the_results_nor_dvc_lock(repo):
    """Everything git tracks is a pure function of data, params and code: no wall-clock times."""
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "the small run's results")
    out = run(repo, "dvc", "repro", "--force").stdout
    assert ran_stages(out) == ALL_STAGES
    assert run(repo, "git", "status", "--porcelain").stdout == ""  # dvc.lock, metrics and CSVs unchanged
    assert "Data and pipelines are up to date." in run(repo, "dvc", "status").stdout


def test_exp_run_of_ensemble_and_tta_reruns_only_evaluate_and_what_reads_it(repo):
    """One experiment for both evaluation-time params: a predictor with flips exports again; the data
    and training stages are reused as they are (test_predict checks that export is skipped when the
    predictor did not change)."""
    out = run(repo, "dvc", "exp", "run", "-S", "ensemble=true", "-S", "tta=true").stdout
    assert ran_stages(out) == {"evaluate", "export", "plots", "report"}
    for stage in ("download", "prepare", "normalize", "crossval", "train"):
        assert f"Stage '{stage}' didn't change, skipping" in out
    assert json.loads((repo / "reports/evaluate/comparison.json").read_text())["used"] == "ensemble+tta"
    assert "ensemble: true in params.yaml" in (repo / "reports/report.md").read_text()
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert set(metrics["tta"]) == {"accuracy"}  # one more headline value, no more
    back = run(repo, "dvc", "exp", "run", "-S", "ensemble=auto", "-S", "tta=false").stdout  # the defaults again
    assert ran_stages(back) == set()  # the committed run's evaluation, from the run-cache


def test_bad_param_fails_clearly_and_loses_nothing(repo):
    """DVC removes a stage's outputs before running it; the previous ones stay in git and DVC's cache,
    and undoing the change restores them from the run-cache without running anything."""
    results = METRICS + ["reports/cv/folds.csv", "reports/cv/history.csv", "reports/report.md", "models/model.pt"]
    before = {m: (repo / m).read_bytes() for m in results}
    set_params(repo / "params.yaml", {"lr": "fast"})
    failed = run(repo, "dvc", "repro", ok=False)
    output = failed.stderr + failed.stdout
    assert failed.returncode != 0
    assert "lr: expected a number, got 'fast'" in output
    assert "Traceback" not in output
    set_params(repo / "params.yaml", {"lr": "0.008"})
    back = run(repo, "dvc", "repro").stdout
    assert ran_stages(back) == set() and "Stage 'crossval' is cached - skipping run" in back
    assert {m: (repo / m).read_bytes() for m in results} == before


def test_sigkilled_crossval_resumes_to_the_metrics_of_an_uninterrupted_run(repo):
    """Kill `dvc repro` (the whole process group) with SIGKILL in the middle of a crossval with new
    params: `dvc checkout` brings the previous results back meanwhile, and `dvc repro` resumes from
    the checkpoints (the finished folds are not repeated) to exactly an uninterrupted run's results."""
    import signal
    import time

    previous = {name: (repo / name).read_bytes() for name in ("reports/cv/summary.json", "reports/cv/history.csv")}
    set_params(repo / "params.yaml", {"epochs": "8"})  # new params: not in the run-cache, long enough to kill
    checkpoints = repo / ".foldwise" / "checkpoints" / "crossval"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(repo / "src"), "DVC_NO_ANALYTICS": "1", "FOLDWISE_DEVICE": "cpu"}
    victim = subprocess.Popen(["dvc", "repro", "crossval"], cwd=repo, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*/run002.pt")):  # the third of six runs has started
        assert victim.poll() is None, "crossval finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert not (repo / "reports/cv.json").exists()  # nothing half-written that could pass for a result

    run(repo, "dvc", "checkout", "--force")  # meanwhile: the results dvc.lock describes, from DVC's cache
    assert {name: (repo / name).read_bytes() for name in previous} == previous

    resumed = run(repo, "dvc", "repro", "crossval")
    assert "resuming" in resumed.stderr + resumed.stdout
    assert not checkpoints.exists()
    outputs = ["reports/cv.json", "reports/cv/folds.csv", "reports/cv/history.csv", "reports/cv/summary.json"]
    after_resume = {name: (repo / name).read_bytes() for name in outputs}
    live = sorted((repo / "reports/live/crossval").rglob("*.tsv"))
    live_after_resume = [path.read_bytes() for path in live]
    run(repo, "dvc", "repro", "--force", "--single-item", "crossval")  # the same params, uninterrupted
    assert {name: (repo / name).read_bytes() for name in outputs} == after_resume
    assert [path.read_bytes() for path in live] == live_after_resume  # dvclive's curves too
    set_params(repo / "params.yaml", {"epochs": "2"})


def test_a_model_damaged_in_dvcs_cache_is_refused_by_evaluate_and_rebuilt_by_repro_f_train(repo):
    """16 flipped bytes in model.pt's cache object, then `dvc checkout`: DVC trusts its cache, and
    torch loads the damaged weights without a word; evaluate checks the sha256 train recorded (in
    git) and refuses, naming the file and the fix; the fix it names repairs the cache too."""
    import yaml

    run(repo, "dvc", "repro")  # the workspace as dvc.lock describes it (from the run-cache)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    md5 = next(o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"] == "models/model.pt")
    cached = repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    metrics = (repo / "reports/metrics.json").read_bytes()
    data = bytearray(cached.read_bytes())
    stat = cached.stat()
    middle = len(data) * 3 // 4  # inside the weights
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    cached.chmod(0o644)
    cached.write_bytes(bytes(data))
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (repo / "models/model.pt").unlink()
    run(repo, "dvc", "checkout", "models/model.pt")
    assert (repo / "models/model.pt").read_bytes() == bytes(data)
    failed = run(repo, "dvc", "repro", "-f", "-s", "evaluate", ok=False)
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0 and "Traceback" not in output
    assert "error: models/model.pt is damaged: its sha256 is " in output
    fix = (f"(recorded in models/model.json); restore it from DVC's cache with `dvc checkout -f "
           f"models/model.pt`; if this error comes back, the cached copy is damaged too: delete it "
           f"(`rm -f \"$(dvc cache dir)/files/md5/{md5[:2]}/{md5[2:]}\"`) and train again: `dvc repro -f -s train`")
    assert fix in output, output
    run(repo, "dvc", "checkout", "-f", "models/model.pt")  # the first fix: no help, the cache is damaged
    assert run(repo, "dvc", "repro", "-f", "-s", "evaluate", ok=False).returncode != 0
    run(repo, "dvc", "repro", "-f", "-s", "train")  # without the second fix's rm: DVC re-links its damaged copy
    assert (repo / "models/model.pt").read_bytes() == bytes(data)
    run(repo, "bash", "-c", " && ".join(re.findall(r"`(rm -f [^`]*|dvc repro [^`]*)`", fix)))  # as the error says
    assert cached.read_bytes() != bytes(data) and "models/model.pt" not in run(repo, "dvc", "status").stdout
    run(repo, "dvc", "repro", "-f", "-s", "evaluate")
    assert (repo / "reports/metrics.json").read_bytes() == metrics

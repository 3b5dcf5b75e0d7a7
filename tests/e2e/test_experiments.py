"""End to end with real DVC experiments on scikit-learn's digits: the run-cache, queued experiments
side by side, and dvclive's files while a stage runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import copy_project
from tests.e2e.test_pipeline import METRICS, ran_stages, run, set_params

TRAINING = ["crossval", "train", "evaluate", "export", "plots", "report"]
DATA = ["download", "prepare", "normalize"]


@pytest.fixture(scope="module")
def digits(digits_reference, tmp_path_factory) -> Path:
    """A project on digits whose reference run (lr 0.008) is committed with its dvc.lock."""
    return copy_project(digits_reference, tmp_path_factory.mktemp("digits"))


def snapshot(repo: Path) -> dict[str, bytes]:
    return {m: (repo / m).read_bytes() for m in METRICS + ["reports/cv/folds.csv", "reports/report.md"]}


def experiments(repo: Path) -> dict[str, dict]:
    """`dvc exp show --json`: experiment name -> {file: data} of its metrics and params files."""
    shown = json.loads(run(repo, "dvc", "exp", "show", "--json").stdout)
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev.get("data") or {}
                files = {**(data.get("metrics") or {}), **(data.get("params") or {})}
                found[rev.get("name") or rev["rev"]] = {path: f.get("data") for path, f in files.items()}
    return found


def metric_leaves(data) -> int:
    return sum(metric_leaves(v) for v in data.values()) if isinstance(data, dict) else 1


def assert_restored_from_the_run_cache(log: str) -> None:
    assert ran_stages(log) == set(), log
    for stage in TRAINING:
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in log
    for stage in DATA:
        assert f"Stage '{stage}' didn't change, skipping" in log


def test_going_back_to_earlier_params_restores_every_stage_from_the_run_cache(digits):
    """The committed run (lr 0.008, by `dvc repro`), one experiment that trains (lr 0.016), then each
    again: both come back from DVC's run cache byte for byte, with nothing trained."""
    committed = snapshot(digits)
    assert ran_stages(run(digits, "dvc", "exp", "run", "-S", "lr=0.016").stdout) == set(TRAINING)
    experiment = snapshot(digits)
    assert experiment != committed

    # back to the committed params: the workspace is the commit again, byte for byte
    started = time.perf_counter()
    assert_restored_from_the_run_cache(run(digits, "dvc", "exp", "run", "-S", "lr=0.008").stdout)
    print(f"return to lr=0.008: {time.perf_counter() - started:.1f} s")
    assert snapshot(digits) == committed
    assert run(digits, "git", "status", "--porcelain").stdout == ""
    assert "Data and pipelines are up to date." in run(digits, "dvc", "status").stdout

    # and to the experiment's: what `dvc exp run` trained is in the run cache too
    assert_restored_from_the_run_cache(run(digits, "dvc", "exp", "run", "-S", "lr=0.016").stdout)
    assert snapshot(digits) == experiment
    run(digits, "git", "checkout", "--", ".")  # the module's later tests start from the commit
    run(digits, "dvc", "checkout", "--force")


def test_exp_show_is_readable(digits):
    """Headline numbers only: at most 20 metric columns, nothing that changes run to run."""
    shown = json.loads(run(digits, "dvc", "exp", "show", "--json").stdout)
    metrics = shown[0]["data"]["metrics"]
    assert set(metrics) == set(METRICS)
    assert sum(metric_leaves(m["data"]) for m in metrics.values()) <= 20
    flat = json.dumps(metrics)
    assert "seconds" not in flat and "per_class" not in flat and "provenance" not in flat
    table = run(digits, "dvc", "exp", "show", "--only-changed", "--drop", "variants\\..*_std", "--csv").stdout
    assert "valid_acc_std" not in table and "test.accuracy" in table.splitlines()[0]


def wait_for_queue(repo: Path, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = run(repo, "dvc", "queue", "status").stdout
        if not re.search(r"\b(Running|Queued)\b", status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(2)


def test_two_queued_experiments_run_side_by_side_from_the_cache(digits):
    run(digits, "dvc", "exp", "run", "--queue", "-S", "lr=0.002,0.03")  # DVC's sweep syntax: two experiments
    run(digits, "dvc", "queue", "start", "-j", "2", daemon=True)  # returns once the workers are started
    status = wait_for_queue(digits)
    assert len(re.findall(r"\bSuccess\b", status)) == 2, status
    names = re.findall(r"^\w+\s+(\S+)\s+.*\bSuccess\b", status, flags=re.M)
    assert len(names) == 2, status
    for name in names:
        log = run(digits, "dvc", "queue", "logs", name).stdout
        assert ran_stages(log) == set(TRAINING), log  # download, prepare, normalize came from the cache
    shown = experiments(digits)
    for name in names:
        assert shown[name]["reports/metrics.json"]["test"]["accuracy"] > 0.5
    assert sorted(shown[name]["params.yaml"]["lr"] for name in names) == [0.002, 0.03]
    run(digits, "dvc", "exp", "apply", names[0])
    applied = json.loads((digits / "reports/metrics.json").read_text())
    assert applied == shown[names[0]]["reports/metrics.json"]
    assert not (digits / ".foldwise" / "checkpoints").exists()  # both finished: no resume state left
    run(digits, "git", "checkout", "--", ".")
    run(digits, "dvc", "checkout", "--force")


def test_dvclive_files_grow_while_crossval_runs_and_dvc_plots_draws_them(digits):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(digits / "src"), "DVC_NO_ANALYTICS": "1", "FOLDWISE_DEVICE": "cpu"}
    set_params(digits / "params.yaml", {"epochs": "12"})
    curve = digits / "reports/live/crossval/plots/metrics/baseline/valid_acc.tsv"
    proc = subprocess.Popen(["dvc", "repro", "crossval"], cwd=digits, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen: list[int] = []
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if curve.is_file():
            rows = len(curve.read_text().splitlines()) - 1
            if not seen or rows != seen[-1]:
                seen.append(rows)
        time.sleep(0.02)
    out = proc.communicate()[0]
    assert proc.returncode == 0, out
    if seen and seen[0] == 2 * 2:  # the previous run's file, read before DVC removed the stage's outputs
        seen.pop(0)
    assert len(seen) >= 3 and seen == sorted(seen), seen  # read mid-run, growing epoch by epoch
    rows = (curve.read_text().splitlines())
    assert rows[0] == "step\tvalid_acc" and len(rows) == 1 + 2 * 12  # 2 folds x 12 epochs, one curve
    run(digits, "dvc", "plots", "show", "--out", "live-html")
    html = (digits / "live-html" / "index.html").read_text()
    assert "reports/live/crossval/plots/metrics/baseline/valid_acc.tsv" in html
    assert "<script src=" not in html  # offline: the template inlines vega
    set_params(digits / "params.yaml", {"epochs": "2"})
    run(digits, "dvc", "checkout", "--force")

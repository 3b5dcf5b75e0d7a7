"""End to end with real DVC experiments on scikit-learn's digits: one experiment beside the committed
run (lr 0.016 against 0.008) read back from the run-cache and compared with `dvc params diff`,
`dvc metrics diff` and `dvc plots diff` (in real headless Chromium with no network); queued
experiments side by side; and dvclive's files while a stage runs. The tests share one project and one
trained experiment, because each experiment trains six stages again."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foldwise.core.dvc_queue import queue_workers
from foldwise.reporting.plot_data import MAX_PREDICTION_ROWS
from tests.e2e.conftest import copy_project
from tests.e2e.test_live import ARTIFACTS, CHROMIUM_FLAGS, colour_pixels, net, screenshot  # noqa: F401
from tests.e2e.test_pipeline import METRICS, ran_stages, run, set_params

TRAINING = ["crossval", "train", "evaluate", "export", "plots", "report"]
DATA = ["download", "prepare", "normalize"]
DVC_REV_COLOURS = [(0x94, 0x5D, 0xD6), (0x13, 0xAD, 0xC7)]  # dvc-render's first two revision colours
VEGA_REV_COLOURS = [(0x4C, 0x78, 0xA8), (0xF5, 0x85, 0x18)]  # Vega's category10: our templates' revisions


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


@pytest.fixture(scope="module")
def lr_fast(digits) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The committed run's results and those of the experiment ``lr-fast`` (lr 0.016), which trained
    every training stage again and left its results in the workspace."""
    committed = snapshot(digits)
    out = run(digits, "dvc", "exp", "run", "-n", "lr-fast", "-S", "lr=0.016").stdout
    assert ran_stages(out) == set(TRAINING)
    for stage in DATA:
        assert f"Stage '{stage}' didn't change, skipping" in out
    return committed, snapshot(digits)


def test_going_back_to_earlier_params_restores_every_stage_from_the_run_cache(digits, lr_fast):
    """The committed run (lr 0.008, by `dvc repro`), one experiment that trained (lr 0.016), then each
    again: both come back from DVC's run cache byte for byte, with nothing trained."""
    committed, experiment = lr_fast
    assert experiment != committed
    run(digits, "dvc", "exp", "apply", "lr-fast")  # the experiment's results, whatever ran before
    params = run(digits, "dvc", "params", "diff").stdout
    assert re.search(r"params\.yaml\s+lr\s+0\.008\s+0\.016", params), params
    show = run(digits, "dvc", "exp", "show", "--csv").stdout
    assert "lr-fast" in show and "0.016" in show and "test.accuracy" in show

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


def test_plots_diff_of_the_experiment_renders_offline(net, digits, lr_fast, tmp_path):
    run(digits, "dvc", "plots", "diff", "HEAD", "lr-fast", "-o", "diff-html")
    page = digits / "diff-html" / "index.html"
    html = page.read_text()
    assert "<script src=" not in html and "/* vega-embed@6.18.2 */" in html  # .dvc/config's offline template
    assert "Test confusion matrix" in html and "learning_curves.png" in html
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium not found: run `make test` (installs Debian's chromium)"
    dom = net.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'dom'}", "--virtual-time-budget=20000",
                   "--dump-dom", f"file://{page}"]).stdout
    live = len(list((digits / "reports/live").rglob("*.tsv")))  # dvclive's curves: one plot each
    # every data plot drawn, none failed: the 8 foldwise plots and dvclive's curves
    assert dom.count('class="marks"') == html.count("vegaEmbed(") >= 8 + live, dom[-2000:]
    assert dom.count("HEAD_reports_figures_") == dom.count("lr-fast_reports_figures_") == 6  # both runs' PNGs
    shot = screenshot(net, f"file://{page}", ARTIFACTS / "plots-diff.png", tmp_path, size="1500,7000")
    print(f"screenshot: {ARTIFACTS / 'plots-diff.png'}")
    for colour in DVC_REV_COLOURS + VEGA_REV_COLOURS:  # both revisions' marks are on screen
        assert colour_pixels(shot, colour) > 150, colour


def test_metrics_diff_of_the_experiment_is_a_readable_table(digits, lr_fast):
    out = run(digits, "dvc", "metrics", "diff", "HEAD", "lr-fast").stdout
    lines = out.splitlines()
    assert re.match(r"Path\s+Metric\s+HEAD\s+lr-fast\s+Change$", lines[0]), out
    row = next(line for line in lines if re.search(r"reports/metrics\.json\s+test\.accuracy\s", line))
    slow, fast, change = map(float, row.split()[2:5])
    assert 0 < slow <= 1 and 0 < fast <= 1 and change == pytest.approx(fast - slow, abs=2e-4)
    assert "reason" not in out and "{" not in out  # numbers only, one per cell


def test_plot_files_stay_small(digits):
    for path in [*(digits / "reports").glob("*.json"), *(digits / "reports/curves").glob("*.csv"),
                 *(digits / "reports/evaluate").glob("*.csv"), digits / "reports/report.md"]:
        assert path.stat().st_size < 100_000, path
    rows = (digits / "reports/evaluate/predictions.csv").read_text().count("\n") - 1
    assert 0 < rows <= MAX_PREDICTION_ROWS


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
    """`dvc queue status` once nothing is running or queued. Each status costs 2-4 s of a core, which
    the workers it waits for need: it is asked for only when no queue worker is left."""
    deadline = time.monotonic() + timeout
    while True:
        while queue_workers(repo):
            assert time.monotonic() < deadline, "the queue workers are still running"
            time.sleep(0.2)
        status = run(repo, "dvc", "queue", "status").stdout
        if not re.search(r"\b(Running|Queued)\b", status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(2)


def test_two_queued_experiments_run_side_by_side_from_the_cache(digits):
    # DVC's sweep syntax: two experiments, each as far as evaluate (the metrics)
    run(digits, "dvc", "exp", "run", "--queue", "-S", "lr=0.002,0.03", "evaluate")
    run(digits, "dvc", "queue", "start", "-j", "2", daemon=True)  # returns once the workers are started
    status = wait_for_queue(digits)
    assert len(re.findall(r"\bSuccess\b", status)) == 2, status
    names = re.findall(r"^\w+\s+(\S+)\s+.*\bSuccess\b", status, flags=re.M)
    assert len(names) == 2, status
    for name in names:
        log = run(digits, "dvc", "queue", "logs", name).stdout
        assert ran_stages(log) == {"crossval", "train", "evaluate"}, log  # the data stages came from the cache
        # what the CPU-sharing rule chose (both ways give the same results): one run at a time while the
        # other experiment runs too, two side by side while it runs alone
        assert re.search(r"^crossval: cpu, (one run at a time, 1 torch threads|2 runs side by side in local "
                         r"processes, 1 torch threads each)$", log, re.M), log
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

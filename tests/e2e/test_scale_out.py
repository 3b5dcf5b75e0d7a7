"""End to end: crossval fanned out on a local Ray (`FOLDWISE_RAY=local`) gives, byte for byte, the
sequential run's results on digits.

Real dvc in a temporary git repo, a real local Ray started by the crossval stage, scikit-learn's digits.
Both runs use one torch thread per run (``OMP_NUM_THREADS=1`` for the sequential one, which is what
``FOLDWISE_RAY_CPUS=1`` gives each Ray run): the thread count, not the engine, is what moves floats.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from tests.e2e.test_benchmarks import ROOT, dvc_env
from tests.e2e.test_pipeline import METRICS, ran_stages, run

pytest.importorskip("ray")


def test_ray_local_repro_gives_the_sequential_results_byte_for_byte(digits_copy):
    """On the reproduced digits project (its runs side by side in local processes, as the default is on
    2 cores): crossval forced alone, once in one process and once fanned out onto Ray."""
    repo = digits_copy
    out = run(repo, "env", "FOLDWISE_PARALLEL_RUNS=1", "dvc", "repro", "--force", "--single-item", "crossval")
    assert ran_stages(out.stdout) == {"crossval"} and "ran on" not in out.stderr
    assert "crossval: cpu, one run at a time, 1 torch threads" in out.stderr
    # one process and the local processes agree byte for byte: nothing for git
    assert run(repo, "git", "status", "--porcelain").stdout == ""
    sequential = {m: json.loads((repo / m).read_text()) for m in METRICS}
    # crossval is the stage whose runs Ray takes: forced alone, its outputs must be the sequential ones
    fanned = run(repo, "env", "FOLDWISE_RAY=local", "FOLDWISE_RAY_CPUS=1",
                 "dvc", "repro", "--force", "--single-item", "crossval")
    assert ran_stages(fanned.stdout) == {"crossval"}
    assert "Started a local Ray instance" in fanned.stderr + fanned.stdout
    ran_on = [line for line in fanned.stderr.splitlines() if ": ran on " in line]
    assert len(ran_on) == 3 * 2  # three variants x two folds, each a Ray task
    assert {m: json.loads((repo / m).read_text()) for m in METRICS} == sequential
    # every output byte-identical, so dvc.lock too: nothing for git, and DVC sees nothing to do
    assert run(repo, "git", "status", "--porcelain").stdout == ""
    assert "Data and pipelines are up to date." in run(repo, "dvc", "status", "crossval").stdout


def test_quick_scale_out_benchmark_gives_identical_tables_and_every_row(tmp_path):
    """benchmarks/scale_out.py --quick on digits: the Ray path's tables equal one process's, and
    the DDP rows trained (the script itself exits non-zero when the tables differ)."""
    pytest.importorskip("ray")
    out = tmp_path / "scale_out.md"
    subprocess.run([sys.executable, "benchmarks/scale_out.py", "--quick", "--out", str(out)], cwd=ROOT,
                   env={**dvc_env(), "FOLDWISE_DEVICE": "cpu"}, check=True, timeout=900, capture_output=True)
    text = out.read_text()
    threads = torch.get_num_threads()
    assert re.search(rf"^\| one process, {threads} threads \| [\d.]+ \| 1\.000 \|  \|$", text, re.M), text
    assert re.search(rf"^\| Ray, local: 1 worker x {threads} threads \| [\d.]+ \| [\d.]+ \| yes \|$", text, re.M)
    accs = re.findall(r"^\| final training: [12] process(?:es \(DDP, gloo\))?, valid acc (0\.\d{4}) \|", text, re.M)
    assert len(accs) == 2 and all(float(a) > 0.2 for a in accs)  # 10 digits, 5 steps of one epoch: above chance
    assert re.search(r"Ray's overhead on this machine: \*\*[-+][\d.]+%\*\*", text)

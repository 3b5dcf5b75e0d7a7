"""Crossval in one process vs on Ray: the fan-out's overhead here, and runs per GPU on a CUDA machine.

    .venv/bin/python benchmarks/scale_out.py [--quick] [--out benchmarks/scale_out.md]

Needs the prepared default dataset (``dvc repro normalize`` or ``make run``) and Ray (``make test``
installs it). On this machine: params.yaml's cross-validation (every compared variant on every fold)
trained (1) in this process, torch at its default thread count, as the crossval stage does it, and
(2) as Ray tasks on a local Ray of this machine's cores with ``FOLDWISE_RAY_CPUS`` = that count:
one run at a time with the same threads, so what differs is Ray alone (starting it, shipping the
split, a worker per run slot, gathering results). Both are timed from the stage's point of view
(Ray's start and stop included) and their tables must be identical. On a CUDA machine it also
times the Ray path at 1, 2 and 4 runs per GPU (``FOLDWISE_RAY_GPUS`` = 1, 0.5, 0.25).
``--quick`` (for the test suite, which has no prepared Fashion-MNIST): scikit-learn's digits,
prepared by the real stages in a temporary folder, 1 epoch, 2 folds; its times mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from foldwise.core.params import load_params
from foldwise.data.batches import open_arrays, open_split
from foldwise.data.layout import read_classes
from foldwise.training.crossval import run_crossval
from foldwise.training.fanout import RayFanout, RaySettings

ROOT = Path(__file__).resolve().parents[1]


def base_params(quick: bool) -> dict:
    """params.yaml as written (``--quick``: on digits, 1 epoch)."""
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    return {**raw, "dataset": "digits", "epochs": 1} if quick else raw


def prepare_digits(folder: Path) -> Path:
    """``--quick``: digits downloaded, prepared and normalised by the real stages in ``folder``."""
    import yaml

    Path(folder, "params.yaml").write_text(yaml.safe_dump(base_params(True)))
    for stage, *args in (("download", "--out", "data/raw"), ("prepare", "--raw", "data/raw", "--out", "data/prepared"),
                         ("normalize", "--prepared", "data/prepared", "--out", "data/stats.json")):
        subprocess.run([sys.executable, str(ROOT / "stages" / f"{stage}.py"), *args], cwd=folder, check=True,
                       capture_output=True)
    return Path(folder, "data", "prepared")


def cv_inputs(prepared: Path, quick: bool):
    p = load_params(prepared.parents[1] / "params.yaml" if quick else ROOT / "params.yaml")
    stats = json.loads((prepared.parent / "stats.json").read_text())
    if quick:
        p = dataclasses.replace(p, epochs=1, k_folds=2, compare=("baseline", "l2"))
    return p, stats, len(read_classes(prepared))


def identical(a, b) -> bool:
    return (a.history.drop(columns="seconds").equals(b.history.drop(columns="seconds"))
            and a.runs.equals(b.runs) and a.summary == b.summary)


def measure(prepared: Path, quick: bool) -> dict:
    p, stats, classes = cv_inputs(prepared, quick)
    threads = torch.get_num_threads()
    p = dataclasses.replace(p, threads=threads)  # each Ray run's torch threads: those of the one process
    arrays = open_arrays(prepared, "train", stats)
    rows = []
    started = time.perf_counter()
    source = open_split(prepared, "train", stats, torch.device("cpu"), p.memory_budget_mb)
    alone = run_crossval(source, classes, p)
    rows.append({"path": f"one process, {threads} threads", "seconds": time.perf_counter() - started})
    del source
    started = time.perf_counter()
    with RayFanout(RaySettings("local", cpus=float(threads), gpus=0.0), num_cpus=threads) as fanout:
        fanned = run_crossval(arrays, classes, p, fanout=fanout)
    rows.append({"path": f"Ray, local: 1 worker x {threads} threads", "seconds": time.perf_counter() - started,
                 "identical": identical(alone, fanned)})
    if torch.cuda.is_available():
        for per_gpu in (1, 2, 4):
            started = time.perf_counter()
            with RayFanout(RaySettings("local", cpus=1.0, gpus=1 / per_gpu)) as fanout:
                run_crossval(arrays, classes, p, fanout=fanout)
            rows.append({"path": f"Ray on {torch.cuda.device_count()} GPU(s): {per_gpu} runs per GPU",
                         "seconds": time.perf_counter() - started})
    runs = len(p.compared) * p.k_folds
    rows += ddp_rows(prepared, quick)
    return {"rows": rows, "runs": runs, "epochs": p.epochs, "images": len(arrays), "threads": threads,
            "overhead": rows[1]["seconds"] / rows[0]["seconds"] - 1}


def ddp_rows(prepared: Path, quick: bool) -> list[dict]:
    """The train stage (params.yaml's, its baseline variant pinned) in 1 and in 2 processes (DDP)."""
    import yaml

    out = []
    for processes in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            params = {**base_params(quick), "variant": "baseline", "train_processes": processes}
            Path(tmp, "params.yaml").write_text(yaml.safe_dump(params))
            Path(tmp, "cv.json").write_text("{}")
            env = {**os.environ, "FOLDWISE_CHECKPOINTS": str(Path(tmp, "checkpoints"))}
            started = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / "stages/train.py"), "--prepared", str(prepared),
                            "--stats", str(prepared.parent / "stats.json"), "--cv", "cv.json",
                            "--model", "m.pt", "--model-record", "m.json", "--history", "h.csv",
                            "--summary", "t.json", "--live", "live"], cwd=tmp, env=env, check=True,
                           capture_output=True)
            seconds = time.perf_counter() - started
            acc = json.loads(Path(tmp, "t.json").read_text())["valid_acc"]
        out.append({"path": f"final training: {processes} process{'es' if processes > 1 else ''}"
                            f"{' (DDP, gloo)' if processes > 1 else ''}, valid acc {acc:.4f}", "seconds": seconds,
                    "base": "train"})
    return out


def markdown(m: dict, quick: bool) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Scale-out: crossval in one process vs on Ray", "",
        f"Written by `.venv/bin/python benchmarks/scale_out.py{' --quick' if quick else ''}` on "
        f"{datetime.date.today().isoformat()}: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}. "
        f"params.yaml's cross-validation: {m['runs']} runs (variants x folds) of {m['epochs']} epochs on "
        f"{m['images']:,} training images. Both paths are timed as the crossval stage sees them (Ray's "
        f"start and stop included), one after the other in this one process; compare their ratio, not "
        f"the seconds across machines or days.", "",
        "| path | wall s | vs one process | tables identical |", "|---|---:|---:|---|",
    ]
    cv_base = m["rows"][0]["seconds"]
    for row in m["rows"]:
        base = m["rows"][-2]["seconds"] if row.get("base") == "train" else cv_base
        same = {True: "yes", False: "**no**"}.get(row.get("identical"), "")
        lines.append(f"| {row['path']} | {row['seconds']:.1f} | {row['seconds'] / base:.3f} | {same} |")
    lines += ["", "The last two rows are the train stage (params.yaml, variant baseline) started as DVC starts it, "
              "compared with each other: one process at torch's thread count vs `train_processes: 2` "
              "(torchrun, two CPU processes of one thread each).", "",
              f"Ray's overhead on this machine: **{100 * m['overhead']:+.1f}%** of the sequential wall time."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--prepared", default=str(ROOT / "data" / "prepared"))
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            m = measure(prepare_digits(Path(tmp)), True)
    else:
        m = measure(Path(args.prepared), False)
    text = markdown(m, args.quick)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    if not all(r.get("identical", True) for r in m["rows"]):
        sys.exit("the Ray path's tables differ from the sequential ones")


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()

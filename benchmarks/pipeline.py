"""Time the whole default pipeline from a fresh clone, stage by stage.

Usage (from the repo root, after `make run` or `make test` installed .venv):
    .venv/bin/python benchmarks/pipeline.py [--params key=value ...]

Clones the committed HEAD into a temporary folder, runs `dvc repro` there
(so nothing is cached), then a second `dvc repro` (should do nothing), and
prints a Markdown table of seconds per stage plus the test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def timed_repro(repo: Path, env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """Run `dvc repro`, echoing its output; return total seconds and seconds per stage."""
    started = time.perf_counter()
    stages: dict[str, float] = {}
    current, since = None, started
    proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        sys.stdout.write(line)
        match = re.match(r"Running stage '(\w+)'", line)
        if match:
            now = time.perf_counter()
            if current:
                stages[current] = now - since
            current, since = match.group(1), now
    if proc.wait() != 0:
        raise SystemExit(f"dvc repro failed in {repo}")
    end = time.perf_counter()
    if current:
        stages[current] = end - since  # includes DVC's caching of that stage's outputs
    return end - started, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", nargs="*", default=[], help="key=value overrides (as dvc exp run -S)")
    parser.add_argument("--save", type=Path, help="copy the run's metrics JSON files into this folder")
    args = parser.parse_args()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    with tempfile.TemporaryDirectory(prefix="foldwise-bench-") as tmp:
        repo = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        env["PYTHONPATH"] = str(repo / "src")
        for override in args.params:
            key, value = override.split("=", 1)
            params = repo / "params.yaml"
            params.write_text(re.sub(rf"^{key}: \S+", f"{key}: {value}", params.read_text(), flags=re.M))
        total, stages = timed_repro(repo, env)
        second, _ = timed_repro(repo, env)
        metrics = json.loads((repo / "reports/metrics.json").read_text())
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            for name in ("metrics.json", "cv.json", "train.json"):
                shutil.copy(repo / "reports" / name, args.save / name)
        cv = json.loads((repo / "reports/cv.json").read_text())
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {metrics['provenance']['device']}; params overrides: {args.params or 'none'}\n")
    print("| stage | seconds |\n|---|---:|")
    for name, seconds in stages.items():
        print(f"| {name} | {seconds:.1f} |")
    print(f"| **total `dvc repro`** | **{total:.1f}** |")
    print(f"| second `dvc repro` (nothing to do) | {second:.1f} |")
    means = ", ".join(f"{k} {v['valid_acc_mean']:.4f} ± {v['valid_acc_std']:.4f}" for k, v in cv["variants"].items())
    print(f"\nCV ({cv['k_folds']} folds): {means}; chosen {cv['chosen']}")
    print(f"Test accuracy {metrics['test']['accuracy']:.4f}, macro F1 {metrics['test']['macro_f1']:.4f}")


if __name__ == "__main__":
    main()

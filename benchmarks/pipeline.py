"""Time the whole default pipeline from a fresh clone, stage by stage.

Usage (from the repo root, after `make run` or `make test` installed .venv):
    .venv/bin/python benchmarks/pipeline.py [--params key=value ...]
(``benchmarks/run.py`` runs this too, after the training benchmarks.)

Clones the committed HEAD into a temporary folder, runs `dvc repro` there
(so nothing is cached), then `dvc repro` again four times (each should do
nothing), and prints a Markdown table of seconds per stage, the no-op runs
and the test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# No-op runs after the first one, for a median: one run alone read 4.5-7.4 s
# in three benchmark runs of the same commit's work on this VM.
NOOP_REPEATS = 3


def dvc_env() -> dict[str, str]:
    """This process's environment with this Python's ``dvc`` first on PATH, analytics off."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1"}


def timed_repro(repo: Path, env: dict[str, str], targets: tuple[str, ...] = ()) -> tuple[float, dict[str, float]]:
    """Run `dvc repro` (of ``targets`` and what they depend on; all stages when empty), echoing its
    output; return total seconds and seconds per stage."""
    started = time.perf_counter()
    stages: dict[str, float] = {}
    current, since = None, started
    proc = subprocess.Popen(["dvc", "repro", *targets], cwd=repo, env=env, stdout=subprocess.PIPE,
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


def no_op_repro(repo: Path, env: dict[str, str], targets: tuple[str, ...] = ()) -> float:
    """Seconds of a `dvc repro` that must find nothing to do; a stage it runs is a bug, not a timing."""
    seconds, stages = timed_repro(repo, env, targets)
    if stages:
        raise SystemExit(f"`dvc repro` re-ran {sorted(stages)} in {repo} although nothing had changed")
    return seconds


def set_params(params: Path, overrides: list[str]) -> None:
    """Apply ``key=value`` overrides to a params.yaml with DVC's own parser, exactly as ``dvc exp run -S``."""
    from dvc.utils.hydra import apply_overrides

    text = params.read_text()
    for override in overrides:
        key = override.split("=", 1)[0]
        if not re.search(rf"^{re.escape(key)}:", text, flags=re.M):
            raise SystemExit(f"--params: no top-level key {key!r} in {params}")
    if overrides:
        apply_overrides(str(params), overrides)


def run_pipeline(overrides: list[str], save: Path | None = None, targets: tuple[str, ...] = ()) -> dict:
    """Clone HEAD into a temporary folder, apply ``overrides``, run ``dvc repro`` (of ``targets``; every
    stage when empty), then again ``1 + NOOP_REPEATS`` times with nothing to do.

    Returns total and per-stage seconds of the first run, the seconds of the
    no-op run right after it (``noop``) and of the ones after that
    (``noop_again``), and, when every stage ran, the run's CV summary, test metrics and device.
    """
    env = dvc_env()
    with tempfile.TemporaryDirectory(prefix="foldwise-bench-") as tmp:
        repo = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        env["PYTHONPATH"] = str(repo / "src")
        set_params(repo / "params.yaml", overrides)
        total, stages = timed_repro(repo, env, targets)
        noops = [no_op_repro(repo, env, targets) for _ in range(1 + NOOP_REPEATS)]
        noop, again = noops[0], noops[1:]
        figures = {"total": total, "stages": stages, "noop": noop, "noop_again": again, "targets": targets}
        if targets:  # the training stages did not run: their files are the committed run's, not this one's
            return figures
        if save:
            save.mkdir(parents=True, exist_ok=True)
            for name in ("metrics.json", "cv.json", "train.json"):
                shutil.copy(repo / "reports" / name, save / name)
        return {**figures, "metrics": json.loads((repo / "reports/metrics.json").read_text()),
                "device": json.loads((repo / "reports/evaluate/provenance.json").read_text())["device"],
                "cv": json.loads((repo / "reports/cv.json").read_text())}


def pipeline_markdown(run: dict) -> str:
    """The per-stage table and the run's results, as Markdown."""
    again = run["noop_again"]
    lines = ["| stage | seconds |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in run["stages"].items()]
    command = " ".join(["`dvc repro", *run["targets"]]) + "`"
    lines += [f"| **total {command}** | **{run['total']:.1f}** |",
              f"| {command} again, nothing to do: right after | {run['noop']:.1f} |",
              f"| the same, median of the next {len(again)} | {statistics.median(again):.1f} "
              f"({min(again):.1f}-{max(again):.1f}) |", ""]
    if run["targets"]:
        lines += [f"Only {command} ran: no results of its own."]
        return "\n".join(lines)
    cv, metrics = run["cv"], run["metrics"]
    means = ", ".join(f"{k} {v['valid_acc_mean']:.4f} ± {v['valid_acc_std']:.4f}" for k, v in cv["variants"].items())
    lines += [f"CV: {means}; chosen {cv['chosen']}. "
              f"Test accuracy {metrics['test']['accuracy']:.4f}, macro F1 {metrics['test']['macro_f1']:.4f}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", nargs="*", default=[], help="key=value overrides (as dvc exp run -S)")
    parser.add_argument("--save", type=Path, help="copy the run's metrics JSON files into this folder")
    args = parser.parse_args()
    run = run_pipeline(args.params, args.save)
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, device {run['device']}; "
          f"params overrides: {args.params or 'none'}\n")
    print(pipeline_markdown(run))


if __name__ == "__main__":
    main()

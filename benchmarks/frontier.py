"""Time to accuracy of whole pipelines: which recipe earns the most test accuracy in the default's time.

    .venv/bin/python benchmarks/frontier.py [--quick] [--out benchmarks/frontier.md]

In a fresh clone of HEAD, the data stages run once (`dvc repro normalize`); then, one after the other
in this one run, each row of ``ROWS`` is a `dvc exp run -S ...` of every later stage (crossval,
train, evaluate, export, plots, report) on Fashion-MNIST, timed from DVC's start to its end. Between
rows the workspace goes back to HEAD, and no row's params repeat another's, so DVC restores nothing.
Each row's overrides are complete (every key a recipe changes), so a row means the same whatever
params.yaml says; params.yaml's default is one of the rows.

The report: each row's seconds (and its crossval and train stages'), its ratio to today's default
(the first row: the recipe and the CPU use before runs went side by side), and the test accuracy of
the single final model and of the fold ensemble (each also with test-time flips, where the row asks
for them); the frontier (rows no other row beats on both time and ensemble accuracy) as a table and
a plot (frontier.png). ``--quick`` (the test suite): scikit-learn's digits, 1 epoch, 2 folds, two
rows; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from experiments import fresh_clone, sh, timed_stages  # noqa: E402
from pipeline import dvc_env, set_params  # noqa: E402
from run import machine  # noqa: E402

from foldwise.training.engine import choose_device  # noqa: E402

# Today's default before this benchmark chose a new one: LeNet [8, 32], 5 epochs, three variants on 5
# folds, one run at a time at 2 torch threads (the machine's cores, as before `threads` existed).
TODAY = {"model": "lenet", "conv_channels": "[8,32]", "width": 1.0, "epochs": 5, "k_folds": 5,
         "compare": "[baseline,l2,dropout]", "augment": False, "augment_flip": "auto", "label_smoothing": 0.0,
         "ema": 0.0, "bn_lr_factor": 1.0, "lr": 0.008, "batch_size": 256, "tta": False, "threads": 2,
         "precision": "fp32"}
TRICKS = {"augment": True, "augment_flip": "alternate", "label_smoothing": 0.1, "ema": 0.99, "bn_lr_factor": 4.0,
          "tta": True, "compare": "[baseline]", "threads": 1}
WIDE = {"conv_channels": "[16,64]", "k_folds": 4}
BF16 = {"precision": "bf16"}
ROWS: list[tuple[str, dict]] = [
    ("today's default (2 threads, one run at a time)", TODAY),
    ("today's recipe, runs side by side (threads 1)", {**TODAY, "threads": 1}),
    ("textbook LeNet-5: [6, 16], no BatchNorm", {**TODAY, "threads": 1, "conv_channels": "[6,16]",
                                                   "batchnorm": False}),
    ("LeNet [16, 64], tricks, 11 epochs, 4 folds", {**TODAY, **TRICKS, **WIDE, "epochs": 11}),
    ("LeNet [16, 64], tricks, 11 epochs, 4 folds, bfloat16", {**TODAY, **TRICKS, **WIDE, **BF16, "epochs": 11}),
    ("LeNet [16, 64], tricks, 14 epochs, 4 folds, bfloat16", {**TODAY, **TRICKS, **WIDE, **BF16, "epochs": 14}),
    ("LeNet [32, 64], tricks, 8 epochs, 4 folds, bfloat16", {**TODAY, **TRICKS, **WIDE, **BF16, "epochs": 8,
                                                             "conv_channels": "[32,64]"}),
    ("ResNet-8 (width 0.5), tricks, 5 epochs, 4 folds, bfloat16", {**TODAY, **TRICKS, **WIDE, **BF16, "epochs": 5,
                                                                   "model": "resnet8", "width": 0.5}),
]
QUICK = {"dataset": "digits", "epochs": 1, "k_folds": 2}
QUICK_ROWS = [ROWS[0], ("LeNet [16, 64], tricks, bfloat16", {**TODAY, **TRICKS, **BF16, "conv_channels": "[16,64]"})]
HEADER = ("# Time to accuracy: whole pipelines\n\nWritten by `.venv/bin/python benchmarks/frontier.py --out "
          "benchmarks/frontier.md` (see its docstring): every row measured in this one run, one after the other, "
          "on the same machine. Seconds are `dvc exp run`'s wall time for crossval to report (the data stages, "
          "common to all rows, ran once before); compare rows by their ratio, not across runs.\n")


def cli_value(value: object) -> str:
    """A value as DVC's -S reads it (YAML): booleans in lower case."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def accuracies(repo: Path) -> dict[str, float]:
    """Test accuracy of each predictor evaluate measured (single, ensemble, each +tta when asked)."""
    rows = json.loads((repo / "reports/evaluate/comparison.json").read_text())["rows"]
    return {row["name"]: row["accuracy"] for row in rows if "T=" not in row["name"]}


def measure(quick: bool) -> dict:
    env = dvc_env()
    env.setdefault("FOLDWISE_DEVICE", "cpu")
    results = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="foldwise-frontier-") as tmp:
        repo = fresh_clone(Path(tmp), env)
        if quick:
            set_params(repo / "params.yaml", [f"{k}={v}" for k, v in QUICK.items()])
        sh(repo, env, "dvc", "repro", "normalize")
        sh(repo, env, "git", "add", "-A")  # what each row's workspace goes back to (--quick: digits' data)
        sh(repo, env, "git", "commit", "-qm", "the data stages", "--allow-empty")
        for name, overrides in QUICK_ROWS if quick else ROWS:
            sets = [arg for k, v in overrides.items() for arg in ("-S", f"{k}={cli_value(v)}")]
            if quick:
                sets += [arg for k, v in QUICK.items() if k != "dataset" for arg in ("-S", f"{k}={v}")]
            seconds, stages, out = timed_stages(repo, env, "dvc", "exp", "run", *sets)
            restored = re.findall(r"Stage '(\w+)' is cached", out)
            if restored:  # a row whose stage's params repeat an earlier row's: its time would mean nothing
                raise SystemExit(f"{name}: DVC restored {restored} from an earlier row; make its params differ")
            results.append({"name": name, "overrides": overrides, "seconds": seconds, "stages": stages,
                            "accuracy": accuracies(repo)})
            print(f"{name}: {seconds:.1f} s, {results[-1]['accuracy']}", file=sys.stderr)
            sh(repo, env, "git", "checkout", "--", ".")
    return {"rows": results, "minutes": (time.perf_counter() - started) / 60, "quick": quick,
            "date": datetime.date.today().isoformat()}


def frontier(rows: list[dict]) -> list[dict]:
    """The rows no other row beats on both seconds and ensemble accuracy, fastest first."""
    best = [r for r in rows if not any(o["seconds"] <= r["seconds"] and ensemble(o) > ensemble(r)
                                       or o["seconds"] < r["seconds"] and ensemble(o) >= ensemble(r)
                                       for o in rows)]
    return sorted(best, key=lambda r: r["seconds"])


def ensemble(row: dict) -> float:
    acc = row["accuracy"]
    return max(acc.get("ensemble", 0.0), acc.get("ensemble+tta", 0.0))


def single(row: dict) -> float:
    acc = row["accuracy"]
    return max(acc.get("single", 0.0), acc.get("single+tta", 0.0))


def fmt(acc: dict, name: str) -> str:
    return f"{acc[name]:.4f}" if name in acc else ""


def markdown(m: dict) -> str:
    rows, base = m["rows"], m["rows"][0]["seconds"]
    lines = ["| recipe | seconds | vs today's default | crossval s | train s | single | single + flips | ensemble | "
             "ensemble + flips |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        a, st = r["accuracy"], r["stages"]
        lines.append(f"| {r['name']} | {r['seconds']:.1f} | {r['seconds'] / base:.2f} | {st['crossval']:.1f} | "
                     f"{st['train']:.1f} | {fmt(a, 'single')} | {fmt(a, 'single+tta')} | {fmt(a, 'ensemble')} | "
                     f"{fmt(a, 'ensemble+tta')} |")
    within = [r for r in rows if r["seconds"] <= base]
    best = max(within, key=lambda r: (ensemble(r), single(r)))
    lines += ["", "The frontier (no other row is both faster and more accurate as an ensemble): "
              + "; ".join(f"{r['name']} ({r['seconds']:.0f} s, {ensemble(r):.4f})" for r in frontier(rows)) + ".",
              "", f"Best ensemble accuracy within today's default's time (ratio <= 1.00): **{best['name']}**: "
              f"single {single(best):.4f}, ensemble {ensemble(best):.4f}, {best['seconds'] / base:.2f}x the time.",
              "", "Each row's overrides of params.yaml (`dvc exp run -S ...`):", ""]
    lines += [f"- {r['name']}: " + (", ".join(f"`{k}={cli_value(v)}`" for k, v in r["overrides"].items())
                                    or "none") for r in rows]
    if m["quick"]:
        lines += ["", "`--quick`: digits, 1 epoch, 2 folds; the figures mean nothing."]
    return "\n".join(lines)


def plot(m: dict, path: Path) -> None:
    """Ensemble and single test accuracy against seconds, the frontier joined."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=110)
    ax = fig.add_subplot()
    rows = m["rows"]
    ax.scatter([r["seconds"] for r in rows], [single(r) for r in rows], marker="o", label="single model")
    ax.scatter([r["seconds"] for r in rows], [ensemble(r) for r in rows], marker="s", label="fold ensemble")
    line = frontier(rows)
    ax.plot([r["seconds"] for r in line], [ensemble(r) for r in line], "k--", lw=1, label="frontier (ensemble)")
    for r in rows:
        ax.annotate(r["name"], (r["seconds"], ensemble(r)), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axvline(rows[0]["seconds"], color="grey", lw=0.8, label="today's default's time")
    ax.set_xlabel("seconds, crossval to report (dvc exp run)")
    ax.set_ylabel("test accuracy (Fashion-MNIST, 10,000 images)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits, 1 epoch, two rows: checks the script only")
    parser.add_argument("--out", type=Path, help="write the Markdown report here, and the plot beside it")
    args = parser.parse_args()
    m = measure(args.quick)
    text = markdown(m)
    print(text)
    print(json.dumps(m))
    if args.out:
        png = args.out.with_suffix(".png")
        plot(m, png)
        args.out.write_text(f"{HEADER}\nMachine: {machine(choose_device())}; the whole run took "
                            f"{m['minutes']:.0f} minutes.\n\n{text}\n\n![The frontier]({png.name})\n")


if __name__ == "__main__":
    main()

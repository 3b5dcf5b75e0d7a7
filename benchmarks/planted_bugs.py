"""Plant each bug that matters, one at a time, and check that a unit test catches it.

Each bug is a one-line change to a copy of ``src/`` (the working tree is never touched); the unit
tests of the module it touches then run against that copy. A bug every test passes is a promise the
suite does not keep. Writes ``benchmarks/planted_bugs.md``; exits 1 if any bug survives.

    .venv/bin/python -m benchmarks.planted_bugs            # all bugs (about 2 minutes on 2 cores)
    .venv/bin/python -m benchmarks.planted_bugs --only cv   # the bugs whose name contains "cv"
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "benchmarks" / "planted_bugs.md"


@dataclass(frozen=True)
class Bug:
    name: str
    what: str  # the promise it breaks, in words
    module: str  # file under src/foldwise/
    old: str  # exactly one occurrence in the module
    new: str
    tests: tuple[str, ...]  # the unit-test files of that module


BUGS = (
    Bug("cv-unpaired-seed", "every variant on fold f starts from a different seed (the comparison is no longer paired)",
        "training/crossval.py", "seed = p.seed + spec.fold  #", "seed = p.seed + spec.fold + spec.index  #", ("tests/training/test_crossval.py",)),
    Bug("cv-validates-on-train", "crossval validates on the training fold instead of the held-out fold",
        "training/crossval.py", "data.subset(train_idx), data.subset(valid_idx)", "data.subset(train_idx), data.subset(train_idx)",
        ("tests/training/test_crossval.py",)),
    Bug("train-acc-last-batch", "train accuracy counted from the last batch only",
        "training/engine.py", "correct += (logits.detach().argmax(1) == y).sum()", "correct = (logits.detach().argmax(1) == y).sum()",
        ("tests/training/test_engine.py",)),
    Bug("train-acc-batch-size", "train accuracy inflated by the batch size (each correct image counted once per image "
        "in its batch)", "training/engine.py", "correct += (logits.detach().argmax(1) == y).sum()",
        "correct += (logits.detach().argmax(1) == y).sum() * len(y)", ("tests/training/test_engine.py",)),
    Bug("train-loss-unweighted", "train loss averaged over batches, not images (a short last batch weighs as much)",
        "training/engine.py", "data_loss_sum += data_loss.detach() * len(y)", "data_loss_sum += data_loss.detach() * p.batch_size",
        ("tests/training/test_engine.py",)),
    Bug("no-zero-grad", "optimizer.zero_grad removed: gradients pile up from batch to batch",
        "training/engine.py", "optimizer.zero_grad(set_to_none=True)", "pass", ("tests/training/test_engine.py",)),
    Bug("fit-augments-valid", "augmentation applied to the validation images inside fit",
        "training/engine.py", "_validate(model, valid, group)\n",
        "_validate(model, valid if augmenter is None else type(valid)(augmenter(valid.x), valid.labels), group)\n",
        ("tests/training/test_engine.py",)),
    Bug("predict-train-mode", "predict leaves dropout and BatchNorm in training mode",
        "training/engine.py", "    model.eval()\n    device = next(", "    device = next(", ("tests/training/test_engine.py",)),
    Bug("test-image-leak", "a test image swapped for a training image of the same class",
        "data/prepare.py", "md5, image = part.write(i, out_dir / rel)",
        "md5, image = (train.write(int(np.flatnonzero(train.labels == label)[0]), out_dir / rel) "
        "if split == 'test' and i == idx[0] else part.write(i, out_dir / rel))", ("tests/data/test_prepare.py",)),
    Bug("valid-in-train", "the validation images are also in the training split",
        "data/prepare.py", '"train": (train, pool[rest])', '"train": (train, pool)', ("tests/data/test_prepare.py",)),
    Bug("stats-all-splits", "normalisation statistics computed over train+valid+test instead of train",
        "data/batches.py", 'compute_stats(uint8_chunks(split_files(prepared_dir, "train")))',
        'compute_stats(__import__("itertools").chain.from_iterable(uint8_chunks(split_files(prepared_dir, s)) '
        'for s in ("train", "valid", "test")))', ("tests/data/test_batches.py",)),
    Bug("key-ignores-params", "the checkpoint key ignores the params (a changed run resumes a stale one)",
        "training/resume.py", "config = {k: v for k, v in params.items() if k not in UNTRACKED} | {\"device\": device}",
        "config = {\"device\": device}", ("tests/training/test_resume.py",)),
    Bug("key-ignores-code", "the checkpoint key ignores the package's code",
        "training/resume.py", 'for f in files), *code]', 'for f in files)]',
        ("tests/training/test_resume.py",)),
    Bug("temperature-fit-on-test", "the temperature is fitted on the test images it is then judged on",
        "training/ensemble.py", "fit_temperature(log_probabilities(members, valid, flip), valid.labels.cpu())",
        "fit_temperature(log_probabilities(members, test, flip), test.labels.cpu())", ("tests/training/test_ensemble.py",)),
    Bug("ensemble-averages-logits", "the ensemble averages the members' logits instead of their probabilities",
        "training/ensemble.py",
        "probs = torch.stack([F.softmax(m(v).float(), dim=1) for m in self.members for v in views]).mean(0)",
        "probs = F.softmax(torch.stack([m(v).float() for m in self.members for v in views]).mean(0), dim=1)",
        ("tests/training/test_ensemble.py",)),
    Bug("ece-unweighted", "ECE averages the bins' gaps without weighting them by their images",
        "reporting/calibration.py", 'return float((full["count"] * gaps).sum() / max(int(table["count"].sum()), 1))',
        "return float(gaps.mean())", ("tests/reporting/test_calibration.py",)),
    Bug("mcnemar-one-sided", "McNemar's p is one-sided (half the two-sided value)",
        "reporting/significance.py", "return min(1.0, 2 * tail / 2**n)", "return min(1.0, tail / 2**n)",
        ("tests/reporting/test_significance.py",)),
    Bug("ensemble-auto-ignores-p", "ensemble: auto uses any more accurate ensemble, significant or not",
        "training/ensemble.py", "better = gain > 0 and p < ALPHA", "better = gain > 0", ("tests/training/test_ensemble.py",)),
    Bug("keeps-first-variant", "crossval keeps the first compared variant's fold models instead of the chosen one's",
        "training/crossval.py", "else [chosen]", "else [p.compared[0]]", ("tests/training/test_crossval.py",)),
    Bug("stats-drop-last", "statistics streamed from PNGs drop the last, partial chunk",
        "data/batches.py", "DataLoader(files, batch_size=chunk, num_workers",
        "DataLoader(files, batch_size=chunk, drop_last=True, num_workers", ("tests/data/test_normalize.py",)),
    Bug("ddp-unweighted-slices", "DDP weights every process's slice alike, though the last global batch splits unevenly",
        "training/engine.py", "weights = [len(s) * group.world / len(b) for s, b in zip(slices, globals_)]",
        "weights = [1.0 for s, b in zip(slices, globals_)]", ("tests/training/test_ddp.py",)),
    Bug("ddp-rank-shuffles", "each DDP process draws its own permutation (slices of different batches)",
        "training/engine.py", "generator = torch.Generator().manual_seed(seed)",
        "generator = torch.Generator().manual_seed(seed + group.rank)", ("tests/training/test_ddp.py",)),
)


def plant(bug: Bug, src: Path) -> None:
    """Apply ``bug`` to the copy of the package under ``src``."""
    path = src / "foldwise" / bug.module
    text = path.read_text()
    if text.count(bug.old) != 1:
        raise SystemExit(f"{bug.name}: {bug.old!r} occurs {text.count(bug.old)} times in {bug.module}, expected once; "
                         f"update the bug in {Path(__file__).name} to the current code")
    path.write_text(text.replace(bug.old, bug.new))


def run_tests(src: Path, tests: tuple[str, ...]) -> tuple[int, list[str]]:
    """Run ``tests`` against the package in ``src``; exit code and the failed tests' names."""
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *tests],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    failed = sorted(set(re.findall(r"^FAILED (\S+?)(?: - |$)", done.stdout, re.M)))
    return done.returncode, failed


def check(bug: Bug) -> list[str]:
    """The tests that fail with ``bug`` planted."""
    with tempfile.TemporaryDirectory(prefix=f"planted-{bug.name}-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        plant(bug, src)
        code, failed = run_tests(src, bug.tests)
        if code not in (0, 1):
            raise SystemExit(f"{bug.name}: pytest exited {code} (not a test failure); run it by hand")
        return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run the bugs whose name contains this")
    parser.add_argument("--no-report", action="store_true", help=f"do not rewrite {REPORT.name}")
    args = parser.parse_args(argv)
    bugs = [b for b in BUGS if args.only in b.name]
    if not bugs:
        raise SystemExit(f"no bug matches {args.only!r}; valid: {', '.join(b.name for b in BUGS)}")
    code, failed = run_tests(ROOT / "src", tuple(dict.fromkeys(t for b in bugs for t in b.tests)))
    if code != 0:
        raise SystemExit(f"the unit tests fail without any bug planted: {failed}; fix them first")
    rows, survivors, started = [], [], time.perf_counter()
    for bug in bugs:
        caught = check(bug)
        print(f"{bug.name}: {'caught by ' + ', '.join(caught) if caught else 'SURVIVED'}", flush=True)
        rows.append(f"| `{bug.name}` | {bug.what} | `{bug.module}` | "
                    f"{'<br>'.join(f'`{t}`' for t in caught) or '**none: survived**'} |")
        if not caught:
            survivors.append(bug.name)
    if not args.no_report and not args.only:
        REPORT.write_text(
            "# Planted bugs\n\n"
            "Each bug below is planted by hand, one at a time, in a copy of `src/`, and the unit tests of the "
            "module it touches are run against that copy. Regenerate with "
            "`.venv/bin/python -m benchmarks.planted_bugs`.\n\n"
            "| bug | the promise it breaks | module | unit tests that fail |\n|---|---|---|---|\n"
            + "\n".join(rows) + f"\n\n{len(bugs) - len(survivors)} of {len(bugs)} caught.\n")
    print(f"{len(bugs) - len(survivors)} of {len(bugs)} planted bugs caught in {time.perf_counter() - started:.0f} s")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())

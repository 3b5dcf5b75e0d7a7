"""Time DVC's experiment workflow on the default pipeline, in a fresh clone: what is reused and what it saves.

Usage (from the repo root, after `make run` or `make test` installed .venv):
    .venv/bin/python benchmarks/experiments.py [--quick] [--out benchmarks/experiments.md]
    .venv/bin/python benchmarks/experiments.py --queue-only [--out benchmarks/queue.md]

In a temporary clone of the committed HEAD (empty DVC cache), one after the other:
1. `make run`'s `dvc repro`: every stage runs; then `git status` must be clean
   (the committed results and dvc.lock reproduced byte for byte);
2. `dvc repro -f`: every stage again; git must stay clean;
3. `dvc exp run -S lr=B`, then `-S lr=A` (A = the committed lr): the return
   must restore every stage from the run-cache; its time is compared with
   the training stages' time in step 1 (the first run of lr=A);
4. two experiments run one after the other (`dvc exp run -S lr=C`, `-S lr=D`)
   against two of the same cost queued (`dvc exp run --queue -S lr=E,F`,
   `dvc queue start -j 2`), measured side by side in this run.

``--queue-only``: in a fresh clone whose data stages ran, two experiments queued and run by
`dvc queue start -j 2`, then (DVC's run-cache emptied, so nothing is restored) the same two
experiments one after the other with `dvc exp run`: wall times side by side, and each experiment's
metrics must be the same both ways, byte for byte.

``--quick`` is the test suite's smoke run, to keep the script working in seconds: step 1 on
scikit-learn's digits for the data stages only (download to normalize), and the table (every stage,
the forced re-run, the return from the run-cache and the queue have tests of their own in
tests/e2e/); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline import dvc_env, set_params  # noqa: E402
from run import machine  # noqa: E402

from foldwise.core.dvc_queue import queue_workers  # noqa: E402
from foldwise.training.engine import choose_device  # noqa: E402

TRAINING = ("crossval", "train", "evaluate", "export", "plots", "report")
DATA = ("download", "prepare", "normalize")
QUICK = ["dataset=digits"]
QUICK_STAGES = ("normalize",)  # --quick: `dvc repro normalize`, the data stages
HEADER = ("# DVC experiment workflow, default pipeline\n\nWritten by `.venv/bin/python benchmarks/experiments.py "
          "--out benchmarks/experiments.md`: a fresh clone of HEAD, each step after the previous one (see the "
          "script's docstring). Ratios are measured side by side in one run; absolute seconds drift with the VM.\n")
LRS = {"back": 0.01, "sequential": (0.004, 0.016), "queued": (0.005, 0.02)}  # the committed lr is A


def sh(repo: Path, env: dict[str, str], *args: str, daemon: bool = False) -> str:
    """Run a command in ``repo``; its output (stdout and stderr), or SystemExit naming the failure.

    ``daemon``: the command leaves processes running (`dvc queue start`'s workers), which inherit its
    output: it goes to a file, since reading a pipe to its end would wait until they exit.
    """
    if daemon:
        with tempfile.TemporaryFile("w+") as log:
            done = subprocess.run(args, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
            log.seek(0)
            done.stdout, done.stderr = log.read(), ""
    else:
        done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed in {repo}:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def timed(repo: Path, env: dict[str, str], *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    out = sh(repo, env, *args)
    return time.perf_counter() - started, out


def stage_seconds(out: str) -> dict[str, float]:
    """Seconds per stage from `dvc repro` output timestamped line by line (see ``timed_stages``)."""
    stages, current, since = {}, None, None
    for line in out.splitlines():
        stamp, _, text = line.partition(" ")
        match = re.match(r"Running stage '(\w+)'", text)
        if match or text.startswith("END"):
            now = float(stamp)
            if current:
                stages[current] = now - since
            current, since = (match.group(1) if match else None), now
    return stages


def timed_stages(repo: Path, env: dict[str, str], *args: str) -> tuple[float, dict[str, float], str]:
    """Run a dvc command, timestamping each output line: total seconds, seconds per stage, output."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [f"{time.perf_counter():.3f} {line.rstrip()}" for line in proc.stdout]
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(args)} failed in {repo}:\n" + "\n".join(lines))
    lines.append(f"{time.perf_counter():.3f} END")
    out = "\n".join(lines)
    return time.perf_counter() - started, stage_seconds(out), out


def ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", out))


def require_clean(repo: Path, env: dict[str, str], after: str, targets: tuple[str, ...] = ()) -> None:
    status = sh(repo, env, "git", "status", "--porcelain")
    if status.strip():
        raise SystemExit(f"git status is not clean after {after}:\n{status}")
    if "Data and pipelines are up to date." not in sh(repo, env, "dvc", "status", *targets):
        raise SystemExit(f"dvc status is not up to date after {after}")


def queue_wall(repo: Path, env: dict[str, str], lrs: tuple[float, float]) -> tuple[float, list[str]]:
    """Queue two experiments (DVC's sweep syntax), run them with two workers; wall seconds and names."""
    sh(repo, env, "dvc", "exp", "run", "--queue", "-S", f"lr={lrs[0]},{lrs[1]}")
    started = time.perf_counter()
    sh(repo, env, "dvc", "queue", "start", "-j", "2", daemon=True)
    while True:
        while queue_workers(repo):  # each `dvc queue status` costs 2-4 s of a core the workers need
            time.sleep(0.2)
        status = sh(repo, env, "dvc", "queue", "status")
        if not re.search(r"\b(Running|Queued)\b", status):
            break
        time.sleep(1)
    seconds = time.perf_counter() - started
    names = re.findall(r"^\w+\s+(\S+)\s+.*\bSuccess\b", status, flags=re.M)
    if len(names) != 2:
        raise SystemExit(f"queued experiments did not both succeed:\n{status}")
    for name in names:
        reran = ran(sh(repo, env, "dvc", "queue", "logs", name)) & set(DATA)
        if reran:
            raise SystemExit(f"queued experiment {name} re-ran {sorted(reran)} instead of restoring them")
    return seconds, names


def fresh_clone(tmp: Path, env: dict[str, str]) -> Path:
    """A clone of the committed HEAD in ``tmp``, as a user's (with what make adds), ``env`` pointed at it."""
    repo = tmp / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    env["PYTHONPATH"] = str(repo / "src")
    sh(repo, env, "git", "config", "user.name", "foldwise benchmark")
    sh(repo, env, "git", "config", "user.email", "benchmark@foldwise.invalid")
    template = ROOT / ".foldwise/plots/offline.html"  # what make adds: the offline plots page template
    (repo / ".foldwise/plots").mkdir(parents=True)
    (repo / ".foldwise/plots/offline.html").write_bytes(template.read_bytes())
    return repo


def measure(quick: bool) -> dict:
    env = dvc_env()
    env.setdefault("FOLDWISE_DEVICE", "cpu")
    figures: dict = {"quick": quick}
    with tempfile.TemporaryDirectory(prefix="foldwise-exp-bench-") as tmp:
        repo = fresh_clone(Path(tmp), env)
        if quick:
            set_params(repo / "params.yaml", QUICK)
        committed_lr = float(re.search(r"^lr: (\S+)", (repo / "params.yaml").read_text(), re.M).group(1))

        targets = QUICK_STAGES if quick else ()
        total, stages, out = timed_stages(repo, env, "dvc", "repro", *targets)
        figures["first"] = {"total": total, "stages": stages}
        if quick:  # the committed results are the default run's: commit the quick ones as the reference
            sh(repo, env, "git", "add", "-A")
            sh(repo, env, "git", "commit", "-qm", "quick reference run")
        require_clean(repo, env, "the first dvc repro in a fresh clone", targets)
        if not quick:
            total, stages, _ = timed_stages(repo, env, "dvc", "repro", "-f")
            figures["forced"] = {"total": total, "stages": stages}
            require_clean(repo, env, "dvc repro -f")

        if not quick:
            figures["b"], out = timed(repo, env, "dvc", "exp", "run", "-S", f"lr={LRS['back']}")
            figures["back"], out = timed(repo, env, "dvc", "exp", "run", "-S", f"lr={committed_lr}")
            cached = re.findall(r"Stage '(\w+)' is cached - skipping run", out)
            if ran(out) or set(cached) != set(TRAINING):
                raise SystemExit(f"returning to lr={committed_lr} ran {sorted(ran(out))}, restored {cached}")
            require_clean(repo, env, f"returning to lr={committed_lr}")
            figures["sequential"] = [timed(repo, env, "dvc", "exp", "run", "-S", f"lr={lr}")[0]
                                     for lr in LRS["sequential"]]
            figures["queued"], names = queue_wall(repo, env, LRS["queued"])
        shown = json.loads(sh(repo, env, "dvc", "exp", "show", "--json"))
        figures["experiments"] = sum(len(b.get("experiments") or []) for b in shown)
        figures["metric_leaves"] = leaves(shown[0]["data"]["metrics"])
    return figures


QUEUE_HEADER = ("# Queued experiments against the same ones one after the other\n\nWritten by `.venv/bin/python "
                "benchmarks/experiments.py --queue-only --out benchmarks/queue.md` (see the script's docstring): "
                "the default pipeline, crossval to report, in a fresh clone. Ratios are measured side by side in "
                "one run; absolute seconds drift with the VM.\n")
METRICS = ("reports/metrics.json", "reports/cv.json", "reports/train.json")


def queue_only() -> dict:
    """Two experiments (lr 0.004 and 0.016) queued with two workers, then one after the other: seconds and
    whether every metric matched."""
    env = dvc_env()
    env.setdefault("FOLDWISE_DEVICE", "cpu")
    lrs = LRS["sequential"]
    with tempfile.TemporaryDirectory(prefix="foldwise-queue-bench-") as tmp:
        repo = fresh_clone(Path(tmp), env)
        sh(repo, env, "dvc", "repro", *DATA)
        queued, names = queue_wall(repo, env, lrs)
        chose = sorted({line for name in names for line in re.findall(
            r"^crossval: .*$", sh(repo, env, "dvc", "queue", "logs", name), re.M)})
        by_lr = {}
        for name in names:
            sh(repo, env, "dvc", "exp", "apply", name)
            lr = float(re.search(r"^lr: (\S+)", (repo / "params.yaml").read_text(), re.M).group(1))
            by_lr[lr] = {m: (repo / m).read_text() for m in METRICS}
            sh(repo, env, "git", "checkout", "--", ".")
        shutil.rmtree(repo / ".dvc" / "cache" / "runs")  # nothing restored: every training stage runs again
        sequential, same = [], True
        for lr in lrs:
            seconds, _ = timed(repo, env, "dvc", "exp", "run", "-S", f"lr={lr}")
            sequential.append(seconds)
            same &= by_lr[lr] == {m: (repo / m).read_text() for m in METRICS}
            sh(repo, env, "git", "checkout", "--", ".")
    return {"queued": queued, "sequential": sequential, "same": same, "lrs": lrs, "chose": chose}


def queue_markdown(f: dict) -> str:
    seq = sum(f["sequential"])
    return "\n".join([
        "| step | seconds |", "|---|---:|",
        f"| two experiments queued, `dvc queue start -j 2` (lr {f['lrs'][0]}, {f['lrs'][1]}) | {f['queued']:.1f} |",
        f"| the same two one after the other, `dvc exp run` | {seq:.1f} ({f['sequential'][0]:.1f} + "
        f"{f['sequential'][1]:.1f}) |", "",
        f"- Queued with two workers vs one after the other: **{f['queued'] / seq:.2f}x** the wall time.",
        f"- Every metric of each experiment ({', '.join(METRICS)}) the same both ways, byte for byte: "
        f"**{'yes' if f['same'] else 'NO'}**.",
        f"- What crossval's CPU rule chose in the queued experiments: {'; '.join(f'`{c}`' for c in f['chose'])}."])


def leaves(data) -> int:
    """Metric values in `dvc exp show --json`'s ``metrics`` of one revision."""
    if isinstance(data, dict):
        return sum(leaves(v["data"] if isinstance(v, dict) and "data" in v else v) for v in data.values())
    return 1


def markdown(f: dict) -> str:
    first_training = sum(f["first"]["stages"].get(s, 0.0) for s in TRAINING)
    lines = ["| step | seconds |", "|---|---:|"]
    lines += [f"| fresh clone, `dvc repro`: {name} | {s:.1f} |" for name, s in f["first"]["stages"].items()]
    lines += [f"| fresh clone, `dvc repro` in all (git status clean after it) | {f['first']['total']:.1f} |"]
    if "forced" in f:
        lines += [f"| `dvc repro -f` (git status clean after it, dvc.lock unchanged) | {f['forced']['total']:.1f} |"]
    if "back" in f:
        lines += [f"| `dvc exp run -S lr={LRS['back']}` (a new lr: crossval to report run) | {f['b']:.1f} |",
                  f"| back to the committed lr: every training stage restored from the run-cache | {f['back']:.1f} |"]
    if "queued" in f:
        seq = sum(f["sequential"])
        lines += [f"| two experiments one after the other (lr {LRS['sequential'][0]}, {LRS['sequential'][1]}) | "
                  f"{seq:.1f} ({f['sequential'][0]:.1f} + {f['sequential'][1]:.1f}) |",
                  f"| two of the same cost queued, `dvc queue start -j 2` (lr {LRS['queued'][0]}, "
                  f"{LRS['queued'][1]}) | {f['queued']:.1f} |"]
    lines += [""]
    if "back" in f:
        lines += [f"- Return to a previous lr: **{f['back'] / first_training:.1%}** of that lr's first run "
                  f"(its training stages, {first_training:.1f} s; target at most 5%)."]
    if "queued" in f:
        lines += [f"- Queued with two workers vs one after the other: **{f['queued'] / seq:.2f}x** the wall time."]
    lines += [f"- `dvc exp show --json`: {f['metric_leaves']} metric values for the committed run "
              f"(target at most 20); {f['experiments']} experiments listed."]
    if f["quick"]:
        lines += ["- `--quick`: the fresh clone's repro of the data stages only (tests/e2e/ check every stage, the "
                  "forced re-run, the return from the run-cache and the queue)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits and tiny params: checks the script only")
    parser.add_argument("--queue-only", action="store_true", help="queued vs one after the other, nothing else")
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = parser.parse_args()
    if args.queue_only:
        figures = queue_only()
        text = queue_markdown(figures)
        print(text)
        if args.out:
            args.out.write_text(f"{QUEUE_HEADER}\nMachine: {machine(choose_device())}.\n\n{text}\n")
        if not figures["same"]:
            raise SystemExit("the queued experiments' metrics differ from the same experiments run one after the other")
        return
    figures = measure(args.quick)
    text = markdown(figures)
    print(text)
    print(json.dumps(figures))
    if args.out:
        args.out.write_text(f"{HEADER}\nMachine: {machine(choose_device())}.\n\n{text}\n")


if __name__ == "__main__":
    main()

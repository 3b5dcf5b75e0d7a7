"""A fresh clone's `make run` with a populated DVC remote against one without, side by side.

    .venv/bin/python benchmarks/sharing.py --out benchmarks/sharing.md
    (after `make run`: this repo's workspace is the committed run, which it pushes to a scratch remote)

Both clones are `git clone` of this repo's HEAD in a temporary folder. "With the remote" times what
`make run` does once installed: `foldwise pull`, then `dvc repro`. "Without" times `dvc repro`
alone, every stage computed. The ratio is the point; the seconds drift with the machine.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline import dvc_env  # noqa: E402
from run import machine  # noqa: E402

REMOTE = "foldwise-bench"
TEMPLATE = ".foldwise/plots/offline.html"  # written by make, not tracked: a clone needs it for dvc plots


def sh(cwd: Path, *args: str) -> str:
    env = {**dvc_env(), "PYTHONPATH": str(cwd / "src")}  # the clone's own code, as its stages run it
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed in {cwd}:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def clone(to: Path) -> Path:
    sh(to.parent, "git", "clone", "-q", str(ROOT), str(to))
    (to / TEMPLATE).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / TEMPLATE, to / TEMPLATE)
    return to


def timed(cwd: Path, *commands: tuple[str, ...]) -> tuple[float, str]:
    started = time.perf_counter()
    out = "".join(sh(cwd, *c) for c in commands)
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "sharing.md")
    args = parser.parse_args()
    if "up to date" not in sh(ROOT, "dvc", "status"):
        raise SystemExit("run `make run` first: the remote is filled from this repo's committed run")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = tmp / "remote"
        sh(ROOT, "dvc", "remote", "add", "--local", "-f", REMOTE, str(store))
        try:
            sh(ROOT, "dvc", "push", "-q", "-r", REMOTE)  # the committed run's outputs
        finally:
            sh(ROOT, "dvc", "remote", "remove", "--local", REMOTE)
        with_remote, without = clone(tmp / "with"), clone(tmp / "without")
        sh(with_remote, "dvc", "remote", "add", "--local", "-d", "team", str(store))
        pulled_s, pulled_out = timed(with_remote, (sys.executable, "-m", "foldwise", "pull"),
                                     ("dvc", "repro"))
        computed_s, computed_out = timed(without, ("dvc", "repro"))
        ran = {name: sorted(set(re.findall(r"Running stage '(\w+)'", out)))
               for name, out in (("with", pulled_out), ("without", computed_out))}
        restored = re.search(r"restored from remote 'team': (.*)", pulled_out).group(1)
        same = sh(with_remote, "git", "status", "--porcelain") == "" and sh(with_remote, "dvc", "status").strip() \
            == "Data and pipelines are up to date."
    rows = [
        "# Sharing: a fresh clone with a populated DVC remote",
        "",
        "Regenerate: `.venv/bin/python benchmarks/sharing.py --out benchmarks/sharing.md` (after `make run`).",
        f"Machine: {machine(torch.device('cpu'))}.",
        "",
        "| fresh clone of the default pipeline (Fashion-MNIST) | seconds | stages run |",
        "|---|---|---|",
        f"| with the remote: `foldwise pull`, then `dvc repro` | {pulled_s:.1f} | {', '.join(ran['with']) or 'none'} |",
        f"| without: `dvc repro` | {computed_s:.1f} | {', '.join(ran['without'])} |",
        "",
        f"**{pulled_s / computed_s:.3f}x** the time (1 : {computed_s / pulled_s:.0f}). Restored from the remote: "
        f"{restored}. The restored clone has dvc.lock's md5 for every output and a clean `git status`: {same}.",
    ]
    args.out.write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

"""The final training under torchrun: 2 gloo processes train the MLP on digits, the same twice, and
process 0 alone writes.

The real train stage, started as DVC starts it (``python stages/train.py``) with ``train_processes: 2``:
it starts itself again under torchrun. Every file a process opens for writing is logged by an audit
hook (a ``sitecustomize`` on ``PYTHONPATH``) with the process's torchrun rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARAMS = {"dataset": "digits", "model": "mlp", "hidden_sizes": [64, 32], "epochs": 3, "batch_size": 64,
          "dropout": 0.1, "variants": {"baseline": {}}, "variant": "baseline"}
SITECUSTOMIZE = '''
import os, sys
_log = os.environ.get("WRITES_LOG")
if _log:
    _fd, _busy = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT), []
    def _hook(event, args):
        if event != "open" or _busy or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        mode, flags = args[1], args[2] if len(args) > 2 else 0
        writes = (mode is not None and any(c in mode for c in "wax+")) or (mode is None and flags & (os.O_WRONLY | os.O_RDWR))
        if writes:
            _busy.append(1)
            os.write(_fd, f"{os.environ.get('RANK', 'launcher')}\\t{os.fsdecode(args[0])}\\n".encode())
            _busy.pop()
    sys.addaudithook(_hook)
'''


def stage(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """digits downloaded, prepared and normalised by the real stages, with params.yaml for DDP."""
    import yaml

    root = tmp_path_factory.mktemp("ddp")
    (root / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "train_processes": 2}))
    hooks = root / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": f"{hooks}{os.pathsep}{ROOT / 'src'}", "FOLDWISE_DEVICE": "cpu",
           "FOLDWISE_CHECKPOINTS": str(root / "checkpoints"), "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
           f"{os.environ['PATH']}"}
    stage(root, str(ROOT / "stages/download.py"), "--out", "data/raw", env=env)
    stage(root, str(ROOT / "stages/prepare.py"), "--raw", "data/raw", "--out", "data/prepared", env=env)
    stage(root, str(ROOT / "stages/normalize.py"), "--prepared", "data/prepared", "--out", "data/stats.json", env=env)
    (root / "cv.json").write_text("{}")  # variant pinned: crossval's choice is not read
    return root, env


def train(root: Path, env: dict[str, str], out: str) -> tuple[subprocess.CompletedProcess, list[tuple[str, str]]]:
    log = root / f"{out}.writes"
    done = stage(root, str(ROOT / "stages/train.py"), "--prepared", "data/prepared", "--stats", "data/stats.json",
                 "--cv", "cv.json", "--model", f"{out}/model.pt", "--model-record", f"{out}/model.json",
                 "--history", f"{out}/history.csv", "--summary", f"{out}/train.json", "--live", f"{out}/live",
                 env={**env, "WRITES_LOG": str(log)})
    writes = [tuple(line.split("\t", 1)) for line in log.read_text().splitlines()]
    return done, [(rank, path) for rank, path in writes if out in path or "checkpoints" in path]


@pytest.mark.slow
def test_two_gloo_processes_train_the_same_twice_and_only_rank_0_writes(project):
    root, env = project
    first, writes = train(root, env, "run1")
    assert "train_processes=2: -m torch.distributed.run --standalone" in first.stderr
    assert first.stdout.count("variant baseline (pinned): best epoch") == 1  # one process reports
    assert {rank for rank, _ in writes} == {"0"}, writes  # outputs, dvclive and checkpoints: rank 0 only
    written = {Path(path).name for _, path in writes}
    assert {"model.pt", "model.json", "history.csv", "train.json", "metrics.json"} <= {
        name.split(".tmp-")[0].lstrip(".") if ".tmp-" in name else name for name in written}
    assert any("checkpoints" in path for _, path in writes)  # it checkpointed every epoch...
    assert not (root / "checkpoints").exists() or not any((root / "checkpoints").rglob("*.pt"))  # ...and cleared
    history = (root / "run1/history.csv").read_text().splitlines()
    assert len(history) == 1 + PARAMS["epochs"]
    assert json.loads((root / "run1/train.json").read_text())["valid_acc"] > 0.8
    second, _ = train(root, env, "run2")
    for name in ("model.pt", "history.csv", "train.json"):
        assert (root / "run1" / name).read_bytes() == (root / "run2" / name).read_bytes(), name

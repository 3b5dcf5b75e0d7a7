"""The final training under DDP: two gloo processes train exactly what one process trains on the same
global batches; under torchrun the train stage trains the MLP on digits, the same twice, and process 0
alone writes.

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
import torch

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
        writes = ((mode is not None and any(c in mode for c in "wax+"))
                  or (mode is None and flags & (os.O_WRONLY | os.O_RDWR)))
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
    # mutmut's call-recording pass (make audit) cannot record from a process started in another folder
    inherited = {k: v for k, v in os.environ.items() if (k, v) != ("MUTANT_UNDER_TEST", "stats")}
    env = {**inherited, "PYTHONPATH": f"{hooks}{os.pathsep}{ROOT / 'src'}", "FOLDWISE_DEVICE": "cpu",
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


N, BATCH = 47, 10  # five global batches: 10, 10, 10, 10 and 7 (sliced 4 + 3, so the slice weights matter)


class _OrderLog:
    """A preloaded batch source that keeps every (order, sizes) it is asked for."""

    def __init__(self) -> None:
        from foldwise.data.batches import Preloaded

        g = torch.Generator().manual_seed(3)
        self.source = Preloaded(torch.randn(N, 6, generator=g), torch.randint(0, 3, (N,), generator=g))
        self.labels, self.calls = self.source.labels, []

    def __len__(self) -> int:
        return N

    def batches(self, order, sizes):
        self.calls.append((order.clone(), sizes))
        return self.source.batches(order, sizes)


class _Predictions:
    """A monitor that keeps every epoch's validation predictions (what ``fit`` gathers from the ranks)."""

    wants_steps, wants_predictions = False, True

    def __init__(self) -> None:
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __getattr__(self, name):  # the hooks this test does not read
        return lambda *args, **kwargs: None

    def on_predictions(self, tags, labels, predicted) -> None:
        self.seen.append((labels.clone(), predicted.clone()))


def _sgd_fit(group):
    """Two epochs of ``fit`` with plain SGD (no momentum, schedule, dropout or BatchNorm: the DDP claim
    is then exact) on a small MLP from fixed initial weights: the model, the batch log, the history, the
    validation predictions of each epoch, and the weights of the same run stopped after epoch 1 and
    resumed from its checkpoint."""
    import dataclasses

    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from foldwise.core.params import Params
    from foldwise.data.batches import Preloaded
    from foldwise.training.engine import fit

    def run(epochs, batch=BATCH, **kwargs):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        trained = DistributedDataParallel(model) if group.world > 1 else model
        data = _OrderLog()
        g = torch.Generator().manual_seed(4)
        valid = Preloaded(torch.randn(13, 6, generator=g), torch.randint(0, 3, (13,), generator=g))
        p = dataclasses.replace(Params(), batch_size=batch, epochs=epochs, optimizer="sgd", lr=0.5, momentum=0.0,
                                scheduler="none", l1=0.0)
        return model, data, fit(trained, data, valid, p, seed=7, group=group, **kwargs)

    seen = _Predictions()
    model, data, result = run(2, monitor=seen)
    states: list[dict] = []
    run(1, checkpoint=states.append)
    resumed, _, _ = run(2, resume=states[-1])
    _, trailing, _ = run(1, batch=11)  # 47 = 4 x 11 + 3
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in result.history]
    order, sizes = trailing.calls[0]
    return model, data.calls, history, seen.seen, resumed.state_dict(), (len(order), sizes)


def _ddp_rank(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from foldwise.training.ddp import Group

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    model, calls, history, predictions, resumed, trailing = _sgd_fit(Group(rank, world))
    torch.save({"state": model.state_dict(), "calls": calls, "history": history, "predictions": predictions,
                "resumed": resumed, "trailing": trailing}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ddp_processes_train_exactly_what_one_process_trains(tmp_path):
    """Every epoch, each rank takes its contiguous slice of every global batch of one shared permutation
    (disjoint, together the whole batch) and weights its loss by its share: after two epochs the
    weights equal one process's to float tolerance, and so does every history row; the predictions
    gathered from the ranks' shares are the whole validation set's, and a run stopped after epoch 1
    resumes from its checkpoint to the same weights."""
    import torch.multiprocessing as mp

    from foldwise.training.ddp import SINGLE

    mp.spawn(_ddp_rank, args=(2, f"file://{tmp_path / 'store'}", str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    model, calls, history, predictions, _, trailing = _sgd_fit(SINGLE)
    # a trailing batch of 3 leaves a slice of 1 in two processes: dropped there, trained by one process
    assert trailing == (47, 11)  # one process: all 47 images, the last batch of 3 included
    assert ranks[0]["trailing"] == (24, [6] * 4) and ranks[1]["trailing"] == (20, [5] * 4)
    assert len(calls) == 2 and all(size == BATCH for _, size in calls)
    assert not torch.equal(calls[0][0], calls[1][0])  # a new permutation every epoch
    for epoch, (order, _) in enumerate(calls):
        (order0, sizes0), (order1, sizes1) = ranks[0]["calls"][epoch], ranks[1]["calls"][epoch]
        assert sizes0 == [5, 5, 5, 5, 4] and sizes1 == [5, 5, 5, 5, 3]
        for whole, mine, theirs in zip(order.split(BATCH), order0.split(sizes0), order1.split(sizes1)):
            assert torch.equal(torch.cat([mine, theirs]), whole)  # rank 0's slice, then rank 1's: disjoint
    for rank in ranks:
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(rank["state"][name], tensor, rtol=0, atol=1e-6)
        assert len(rank["history"]) == 2
        for mine, one in zip(rank["history"], history):
            assert mine.keys() == one.keys()
            for key in mine:
                assert mine[key] == pytest.approx(one[key], abs=1e-6), key
        # each rank validates its share; the gathered predictions are the whole set's, in order
        assert len(rank["predictions"]) == 2
        for (labels, mine), (all_labels, one) in zip(rank["predictions"], predictions):
            assert torch.equal(labels, all_labels) and torch.equal(mine, one)
        # stopped after epoch 1 and resumed from its checkpoint (each rank's own streams): the same weights
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(rank["resumed"][name], tensor, rtol=0, atol=1e-6)


def test_the_one_process_group_is_the_identity_and_join_refuses_a_wrong_process_count(monkeypatch):
    from torch import nn

    from foldwise.core.errors import UserError
    from foldwise.training.ddp import SINGLE, Group, join, launched, leave

    assert SINGLE.main and not Group(1, 2).main
    big = 2**53 - 1  # exact in float64, not in float32
    assert SINGLE.total(big, torch.tensor(2.5), 3) == [float(big), 2.5, 3.0]
    assert SINGLE.gather({"a": 1}) == [{"a": 1}]
    model = nn.BatchNorm1d(3)
    SINGLE.share_buffers(model)  # one process: nothing to share, no process group needed
    for key in ("WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert not launched()
    assert join(1, torch.device("cpu")) == (SINGLE, torch.device("cpu"))
    with pytest.raises(UserError, match=r"train_processes is 2, but torchrun started 1 processes.*"
                                        r"--nproc-per-node=2"):
        join(2, torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert not launched()  # torchrun sets both
    with pytest.raises(UserError, match=r"train_processes is 2, but torchrun started 1 processes"):
        join(2, torch.device("cpu"))  # not under torchrun: one process, whatever WORLD_SIZE says
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launched()
    with pytest.raises(UserError, match=r"train_processes is 2, but torchrun started 3 processes"):
        join(2, torch.device("cpu"))
    leave(SINGLE)


@pytest.mark.parametrize("n, world", [(10, 2), (47, 2), (7, 3), (2, 3), (100, 7)])
def test_shards_are_contiguous_cover_the_range_and_differ_by_at_most_one(n, world):
    from foldwise.training.ddp import Group

    shards = [Group(rank, world).shard(n) for rank in range(world)]
    assert [int(i) for s in shards for i in s] == list(range(n))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)  # earlier ranks take the extra


def _collectives_rank(rank: int, world: int, port: int, out: str) -> None:
    """One process as torchrun starts it (its environment variables), joining through ``join``."""
    import torch.distributed as dist
    from torch import nn

    from foldwise.training.ddp import SINGLE, join, leave

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    group, device = join(world, torch.device("cpu"))
    model = nn.BatchNorm1d(2)
    model.running_mean.fill_(rank + 1.0)  # each process its own statistics
    group.share_buffers(model)
    result = {"rank": group.rank, "world": group.world, "device": str(device),
              "total": group.total(rank + 0.5, torch.tensor(2**40 + rank)), "gather": group.gather(f"r{rank}"),
              "running_mean": model.running_mean.tolist(), "shard": group.shard(5).tolist(), "main": group.main}
    leave(SINGLE)  # the one-process group has nothing to leave: the real group stays
    result["kept"] = dist.is_initialized()
    leave(group)
    result["left"] = not dist.is_initialized()
    torch.save(result, f"{out}/collectives{rank}.pt")


@pytest.mark.slow
def test_two_processes_join_sum_gather_share_process_0s_statistics_and_leave(tmp_path):
    """Two processes started as torchrun starts them: each collective against what one process computes
    over both processes' values (the one-process calls here are also how mutmut finds this test)."""
    import socket

    import torch.multiprocessing as mp
    from torch import nn

    from foldwise.training.ddp import SINGLE, join, leave

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_collectives_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"collectives{r}.pt") for r in range(2)]
    assert join(1, torch.device("cpu")) == (SINGLE, torch.device("cpu"))  # one process: no group
    one = nn.BatchNorm1d(2)
    one.running_mean.fill_(2.0)
    SINGLE.share_buffers(one)
    assert one.running_mean.tolist() == [2.0, 2.0]  # nothing to share with
    leave(SINGLE)
    expected_total = [a + b for a, b in zip(SINGLE.total(0.5, 2**40), SINGLE.total(1.5, 2**40 + 1))]
    for rank, result in enumerate(ranks):
        assert (result["rank"], result["world"], result["device"]) == (rank, 2, "cpu")
        assert result["total"] == expected_total == [2.0, float(2**41 + 1)]
        assert result["gather"] == SINGLE.gather("r0") + SINGLE.gather("r1")
        assert result["running_mean"] == [1.0, 1.0]  # process 0's, on both
        assert result["main"] == (rank == 0) and result["kept"] and result["left"]
    assert ranks[0]["shard"] == [0, 1, 2] and ranks[1]["shard"] == [3, 4]


@pytest.mark.slow
def test_relaunch_runs_the_script_under_torchrun_in_that_many_processes_and_returns_its_exit_code(tmp_path, capsys):
    from foldwise.training.ddp import relaunch

    script = tmp_path / "rank.py"
    script.write_text("import os, sys\n"
                      "from pathlib import Path\n"
                      "Path(sys.argv[1], os.environ['RANK']).write_text(os.environ['WORLD_SIZE'] + ' ' + sys.argv[2])\n"
                      "sys.exit(3 if os.environ['RANK'] == '1' and sys.argv[2] == 'fail' else 0)\n")
    assert relaunch(2, [str(script), str(tmp_path), "ok"]) == 0
    assert capsys.readouterr().err == "train_processes=2: -m torch.distributed.run --standalone ...\n"
    assert {f.name: f.read_text() for f in tmp_path.iterdir() if f.name.isdigit()} == {"0": "2 ok", "1": "2 ok"}
    assert relaunch(2, [str(script), str(tmp_path), "fail"]) != 0

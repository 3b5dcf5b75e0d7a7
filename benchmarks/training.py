"""Training speed, side by side in one process on the same Fashion-MNIST data:

(a) ``hand``: a minimal hand-written PyTorch loop on preloaded normalised tensors;
(b) ``foldwise``: the pipeline's own ``engine.fit`` (what crossval and train run);
(c) ``textbook``: torchvision's ``FashionMNIST`` dataset with per-sample
    ``ToTensor`` + ``Normalize`` transforms and a shuffling ``DataLoader``.

All three train the same architecture (``models.build_model``) with the same
optimiser, one-cycle schedule, batch size and initial weights on the 60,000
training images, and evaluate on the 10,000 test images after every epoch.
Their epochs are interleaved (a, c, b in one round, c, a, b in the next), so
drift in this VM's speed hits all three alike and each path follows each other
path equally often. Used by ``benchmarks/run.py``; see its docstring.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from foldwise.core.params import Params
from foldwise.data.batches import Preloaded
from foldwise.data.download import download
from foldwise.data.normalize import compute_stats, to_inputs
from foldwise.data.sources import get_source
from foldwise.training.callbacks import NullMonitor
from foldwise.training.engine import fit, seed_everything
from foldwise.training.models import build_model

# name: (params overrides, batch size); the MLP is 784-512-256-128-64-10 (params.yaml's hidden_sizes)
CONFIGS: dict[str, tuple[dict[str, Any], int]] = {
    "softmax": ({"model": "softmax"}, 256),
    "mlp": ({"model": "mlp"}, 256),
    "mlp-b64": ({"model": "mlp"}, 64),
    "lenet": ({"model": "lenet"}, 256),
}
PATHS = ("hand", "foldwise", "textbook")
# A softmax epoch takes about 0.2 s on 2 cores, where this VM's jitter (tens of ms) decided its b/a
# (0.89, 1.09 and 1.21 in three runs of 5 epochs): three times the epochs for its medians.
EPOCH_MULTIPLIER = {"softmax": 3}


@dataclass
class Data:
    """Fashion-MNIST as torchvision reads it, plus the same images preloaded as the pipeline does."""

    train_ds: Any  # torchvision FashionMNIST(train=True) with per-sample transforms
    test_ds: Any
    x: torch.Tensor  # N x 1 x 28 x 28 float32, normalised with the train mean/std
    y: torch.Tensor
    xt: torch.Tensor
    yt: torch.Tensor


def load_fashion_mnist(root: Path, device: torch.device, train_images: int = 0, test_images: int = 0) -> Data:
    """Fetch the four IDX files the way the download stage does (local mirror first), lay them out
    for torchvision, and build both views. ``train_images``/``test_images`` > 0 keep the first N."""
    import torchvision.transforms as T
    from torchvision.datasets import FashionMNIST

    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    gz = root / "gz"
    download(get_source("fashion-mnist"), gz)
    for path in sorted(gz.rglob("*.gz")):
        with gzip.open(path) as src, open(raw / path.name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    stats = compute_stats(FashionMNIST(root, train=True).data.unsqueeze(1))
    transform = T.Compose([T.ToTensor(), T.Normalize(stats["mean"], stats["std"])])
    train_ds, test_ds = (FashionMNIST(root, train=t, transform=transform) for t in (True, False))
    for ds, n in ((train_ds, train_images), (test_ds, test_images)):
        if n:
            ds.data, ds.targets = ds.data[:n], ds.targets[:n]
    return Data(train_ds, test_ds, to_inputs(train_ds.data.unsqueeze(1), stats, device), train_ds.targets.to(device),
                to_inputs(test_ds.data.unsqueeze(1), stats, device), test_ds.targets.to(device))


class PeakMemory:
    """Peak resident memory (VmHWM) of this process and its live children (DataLoader workers) since
    the last ``reset``, in MB above the resident memory at that reset, and on CUDA the peak
    allocated GPU memory. Linux resets the high-water mark on writing 5 to clear_refs, so no
    sampling thread competes with training for the GIL (a 20 ms sampler slowed epochs 2x)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.baseline = 0.0

    @staticmethod
    def _pids() -> list[int]:
        return [os.getpid(), *(c.pid for c in psutil.Process().children(recursive=True))]

    @staticmethod
    def _sum(field: str, pids: list[int]) -> float:
        total = 0
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith(field)))
        return total / 1024

    def reset(self) -> None:
        """Start a measurement (call right before the timed work)."""
        pids = self._pids()
        for pid in pids:
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                pass
        self.baseline = self._sum("VmRSS:", pids)
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def record(self, result: PathResult) -> None:
        """Raise ``result``'s peaks to what was used since ``reset``."""
        result.rss_peak_mb = max(result.rss_peak_mb, self._sum("VmHWM:", self._pids()) - self.baseline)
        if self.cuda:
            result.cuda_peak_mb = max(result.cuda_peak_mb, torch.cuda.max_memory_allocated() / 2**20)


@dataclass
class PathResult:
    """Seconds per epoch (train + test evaluation) and test accuracy after each epoch, for one path."""

    seconds: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    rss_peak_mb: float = 0.0  # growth of this process and its DataLoader workers during an epoch
    data_mb: float = 0.0  # the images and labels the path trains and tests from
    cuda_peak_mb: float = 0.0


def _one_cycle(optimizer: torch.optim.Optimizer, p: Params, steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=p.lr, total_steps=p.epochs * steps)


def hand_epochs(model: torch.nn.Module, d: Data, p: Params) -> Callable[[], float]:
    """(a) The loop a PyTorch user writes: index preloaded tensors with a permutation, step, then
    evaluate under no_grad. Returns a function running one epoch and giving test accuracy."""
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    schedule = _one_cycle(optimizer, p, -(-len(d.y) // p.batch_size))
    generator = torch.Generator().manual_seed(p.seed)

    def epoch() -> float:
        model.train()
        for idx in torch.randperm(len(d.y), generator=generator).to(d.x.device).split(p.batch_size):
            loss = F.cross_entropy(model(d.x[idx]), d.y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            correct = sum((model(xb).argmax(1) == yb).sum() for xb, yb in zip(d.xt.split(1000), d.yt.split(1000)))
        return correct.item() / len(d.yt)

    return epoch


def textbook_epochs(model: torch.nn.Module, d: Data, p: Params, workers: int) -> Callable[[], float]:
    """(c) The textbook path: DataLoader over the transformed dataset, batches moved to the device."""
    device = d.x.device
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    schedule = _one_cycle(optimizer, p, -(-len(d.train_ds) // p.batch_size))
    train = DataLoader(d.train_ds, batch_size=p.batch_size, shuffle=True, num_workers=workers,
                       generator=torch.Generator().manual_seed(p.seed), persistent_workers=workers > 0)
    test = DataLoader(d.test_ds, batch_size=1000, num_workers=workers, persistent_workers=workers > 0)

    def epoch() -> float:
        model.train()
        for xb, yb in train:
            loss = F.cross_entropy(model(xb.to(device)), yb.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for xb, yb in test:
                correct += (model(xb.to(device)).argmax(1) == yb.to(device)).sum().item()
        return correct / len(d.test_ds)

    return epoch


class _Interleave(NullMonitor):
    """Runs (a) and (c)'s next epochs between (b)'s, and times (b) from the wall clock between
    its epoch ends, so everything ``fit`` does per epoch counts, and nothing else."""

    def __init__(self, others: dict[str, Callable[[], None]], b: PathResult, epochs: int,
                 memory: PeakMemory) -> None:
        self.others, self.b, self.epochs, self.memory = others, b, epochs, memory
        self.since = 0.0
        self.rounds = 0

    def run_others(self) -> None:
        """The others' next epochs, in reversed order every other round: each path then follows each
        other path in half the rounds (right after a textbook epoch, softmax ran 5-10% slower)."""
        runs = list(self.others.values())
        for run in runs if self.rounds % 2 == 0 else runs[::-1]:
            run()
        self.rounds += 1
        self.memory.reset()
        self.since = time.perf_counter()

    def on_epoch_end(self, row: dict[str, Any]) -> None:  # unguarded: a benchmark error must surface
        self.b.seconds.append(time.perf_counter() - self.since)
        self.b.test_acc.append(row["valid_acc"])
        self.memory.record(self.b)
        if row["epoch"] < self.epochs:
            self.run_others()


def compare(name: str, d: Data, base: Params, epochs: int, workers: int,
            memory: PeakMemory) -> dict[str, PathResult]:
    """One configuration of ``CONFIGS``: ``epochs`` (times its ``EPOCH_MULTIPLIER``) interleaved
    epochs of each path."""
    overrides, batch = CONFIGS[name]
    epochs *= EPOCH_MULTIPLIER.get(name, 1)
    p = dataclasses.replace(base, **overrides, batch_size=batch, epochs=epochs, patience=0)
    device = d.x.device
    shape, classes = tuple(d.x.shape[1:]), int(d.y.max()) + 1
    seed_everything(p.seed)
    initial = build_model(shape, classes, p).state_dict()
    models = {}
    for path in PATHS:
        models[path] = build_model(shape, classes, p).to(device)
        models[path].load_state_dict(initial)
    results = {path: PathResult() for path in PATHS}
    preloaded = sum(t.numel() * t.element_size() for t in (d.x, d.y, d.xt, d.yt)) / 2**20
    raw = sum(t.numel() * t.element_size() for ds in (d.train_ds, d.test_ds) for t in (ds.data, ds.targets)) / 2**20
    for path in PATHS:
        results[path].data_mb = raw if path == "textbook" else preloaded
    epoch_fns = {"hand": hand_epochs(models["hand"], d, p),
                 "textbook": textbook_epochs(models["textbook"], d, p, workers)}

    def timed(path: str) -> Callable[[], None]:
        def run() -> None:
            memory.reset()
            started = time.perf_counter()
            acc = epoch_fns[path]()
            results[path].seconds.append(time.perf_counter() - started)
            results[path].test_acc.append(acc)
            memory.record(results[path])
        return run

    interleave = _Interleave({path: timed(path) for path in ("hand", "textbook")}, results["foldwise"], epochs, memory)
    interleave.run_others()
    fit(models["foldwise"], Preloaded(d.x, d.y), Preloaded(d.xt, d.yt), p, p.seed, interleave)
    return results


def time_to_accuracy(d: Data, p: Params, thresholds: tuple[float, ...]) -> tuple[list[dict[str, float]], dict]:
    """``p`` (the default CNN and hyperparameters) trained by ``fit`` on the 60,000 training images,
    tested after each epoch. Returns per-epoch rows and, per threshold, the cumulative seconds
    (training plus the per-epoch test evaluations) at the first epoch that reached it (None: never)."""
    seed_everything(p.seed)
    model = build_model(tuple(d.x.shape[1:]), int(d.y.max()) + 1, p).to(d.x.device)
    result = fit(model, Preloaded(d.x, d.y), Preloaded(d.xt, d.yt), p, p.seed)
    rows, total = [], 0.0
    for row in result.history:
        total += row["seconds"]
        rows.append({"epoch": row["epoch"], "seconds": total, "test_acc": row["valid_acc"]})
    reached = {t: next((r["seconds"] for r in rows if r["test_acc"] >= t), None) for t in thresholds}
    return rows, reached


def reference_workload(d: Data, base: Params, epochs: int, batch_sizes: tuple[int, ...]) -> dict[int, float]:
    """The issue's reference workload, to compare this machine with the one its figures came from:
    the plain MLP 784-512-256-128-64-10 (no BatchNorm: the issue names it for LeNet only) trained
    by torch's own loop (constant-lr Adam, no scheduler, no test pass) on the preloaded images, at
    each of ``batch_sizes``. Returns median seconds per epoch by batch size; the batch sizes' epochs
    are interleaved, against drift."""
    p = dataclasses.replace(base, model="mlp", batchnorm=False, dropout=0.0)
    seed_everything(p.seed)
    model = build_model(tuple(d.x.shape[1:]), int(d.y.max()) + 1, p).to(d.x.device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(p.seed)
    seconds: dict[int, list[float]] = {batch: [] for batch in batch_sizes}
    for _ in range(epochs):
        for batch, times in seconds.items():
            started = time.perf_counter()
            for idx in torch.randperm(len(d.y), generator=generator).to(d.x.device).split(batch):
                loss = F.cross_entropy(model(d.x[idx]), d.y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            loss.item()  # waits for a GPU to finish the epoch
            times.append(time.perf_counter() - started)
    return {batch: statistics.median(times) for batch, times in seconds.items()}

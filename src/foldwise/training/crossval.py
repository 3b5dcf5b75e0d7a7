"""K-fold cross-validation of every compared variant on the same folds.

Folds are computed once (stratified, seeded) and shared by all variants, and
fold ``f`` starts every variant from the same initial weights and the same
batch order, so the comparison is paired: differences come from the variant,
not from luck. The summary gives each variant's mean, standard deviation and
95% confidence interval across folds, and its paired difference from the
reference variant (``baseline``) with a p-value.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedKFold

from foldwise.core.params import Params
from foldwise.data.batches import BatchSource
from foldwise.reporting.cvstats import summarize
from foldwise.training.augment import check_augment
from foldwise.training.callbacks import Monitor
from foldwise.training.engine import fit, seed_everything
from foldwise.training.models import build_model, check_model
from foldwise.training.resume import Checkpoints


def make_folds(labels: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, seeded (train_idx, valid_idx) pairs; every class needs >= k images."""
    counts = np.bincount(labels)
    present = counts[counts > 0]
    if present.min() < k:
        smallest = int(np.flatnonzero(counts == present.min())[0])
        raise ValueError(
            f"k_folds: {k} is larger than the smallest class (label {smallest}: {present.min()} training "
            f"images); valid: 2 to {present.min()}. Lower k_folds or raise max_images_per_split."
        )
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


@dataclass
class CVResult:
    """Per-epoch history of every run, one row per (variant, fold) run, and the summary."""

    history: pd.DataFrame
    runs: pd.DataFrame  # one row per (variant, fold) run: folds.csv
    summary: dict[str, Any]
    weights: dict[tuple[str, int], dict[str, torch.Tensor]]  # (variant, fold) -> the fold model kept
    kept_note: str = ""  # which fold models are kept, and why


@dataclass(frozen=True)
class RunSpec:
    """One (variant, fold) run of crossval, ``index`` its place in the sequential order."""

    index: int
    variant: str
    fold: int

    @property
    def name(self) -> str:
        """Its checkpoint's name."""
        return f"run{self.index:03d}"


Weights = dict[str, torch.Tensor]  # a fold model's state dict, on the CPU
RunResult = tuple[dict[str, Any], list[dict[str, Any]], Weights | None]  # folds.csv row, history, weights
Finished = Iterator[tuple[RunSpec, dict[str, Any], list[dict[str, Any]], Weights | None]]


# What a run reports as it trains, for the live view: ("epoch", its history row) as each epoch ends, and
# with steps asked for, ("step", (tags, epoch in fractions, loss, lr)) after each batch
LiveHook = Callable[[RunSpec, str, Any], None]


class Fanout(Protocol):
    """Runs crossval's pending runs elsewhere (``training.fanout``: local processes or Ray), yielding each as
    it finishes; one that can also passes what each run reports as it trains to ``live`` (steps too, when
    ``steps``), and checkpoints each run after every epoch in ``checkpoints``."""

    def run(self, data: Any, num_classes: int, p: Params, folds: list[tuple[np.ndarray, np.ndarray]],
            pending: list[RunSpec], resume: dict[int, dict[str, Any]], live: LiveHook | None = None,
            steps: bool = False, checkpoints: Checkpoints | None = None) -> Finished: ...


def train_run(data: BatchSource, num_classes: int, p: Params, spec: RunSpec,
              fold: tuple[np.ndarray, np.ndarray], monitor: Monitor | None = None,
              saved: dict[str, Any] | None = None,
              save: Callable[[dict[str, Any]], None] | None = None) -> RunResult:
    """Train one run on its ``fold`` (train and valid indices) of ``data`` (a batch source): its
    folds.csv row, its history and the weights it ends with (a CPU copy; None with ``fold_models:
    none``).

    Fold ``f`` starts from seed ``p.seed + f`` whatever the variant (paired runs). ``saved`` (a
    checkpoint ``save`` wrote after an epoch) continues an interrupted run. Every process that
    calls this with the same arguments and torch thread count gets the same result, bit for bit.
    """
    train_idx, valid_idx = fold
    vp = p.for_variant(spec.variant)
    seed = p.seed + spec.fold  # same start for every variant on this fold
    seed_everything(seed)
    model = build_model(data.shape, num_classes, vp).to(data.labels.device)  # pragma: no mutate (as device)
    started = time.perf_counter() - (saved or {}).get("seconds", 0.0)  # pragma: no mutate (console time only)

    def checkpoint(state: dict[str, Any]) -> None:
        save({**state, "seconds": time.perf_counter() - started})

    result = fit(model, data.subset(train_idx), data.subset(valid_idx), vp, seed, monitor,
                 tags={"variant": spec.variant, "fold": spec.fold}, resume=saved,
                 checkpoint=checkpoint if save else None)
    final = result.final
    row = {
        "variant": spec.variant, "fold": spec.fold,
        "final_valid_acc": final["valid_acc"], "final_valid_loss": final["valid_loss"],
        "best_valid_acc": max(r["valid_acc"] for r in result.history),
        "best_valid_loss": min(r["valid_loss"] for r in result.history),
        "best_epoch": result.best_epoch, "epochs": len(result.history),
        "stopped_early": result.stopped_early,
    }
    # wall-clock time goes to the console only: committed results must not change run to run
    print(f"{spec.variant} fold {spec.fold}: {len(result.history)} epochs in "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    if p.fold_models == "none":
        weights = None
    return row, result.history, weights


def _in_process(data: BatchSource, num_classes: int, p: Params, folds: list[tuple[np.ndarray, np.ndarray]],
                pending: list[RunSpec], resume: dict[int, dict[str, Any]], monitor: Monitor | None,
                checkpoints: Checkpoints | None) -> Finished:
    """The pending runs one after another in this process, checkpointed after every epoch."""
    for spec in pending:
        save = (lambda state, name=spec.name: checkpoints.save(name, state)) if checkpoints else None
        yield spec, *train_run(data, num_classes, p, spec, folds[spec.fold], monitor, resume.get(spec.index), save)


def run_crossval(data: BatchSource, num_classes: int, p: Params, monitor: Monitor | None = None,
                 checkpoints: Checkpoints | None = None, fanout: Fanout | None = None) -> CVResult:
    """Train every compared variant on every fold of ``data`` (a labelled batch source).

    Everything that can be wrong with the params (folds, model, weights file,
    augmentation) fails before the first epoch. With ``checkpoints``, runs
    finished before an interruption are not repeated and the interrupted run
    continues from its last epoch. With ``fanout``, the runs go to it (``data``
    is then what it ships, e.g. ``data.batches.SplitArrays``); each run is
    checkpointed as it returns, and ``monitor`` sees the runs in the sequential
    order, so tables, dvclive files and live view are those of a sequential run.
    """
    folds = make_folds(data.labels.cpu().numpy(), p.k_folds, p.seed)
    for variant in p.compared:
        vp = p.for_variant(variant)
        check_model(data.shape, num_classes, vp)
        check_augment(data.shape, vp)
    runs = [RunSpec(i, v, f) for i, (v, f) in enumerate((v, f) for v in p.compared for f in range(len(folds)))]
    results: dict[int, RunResult] = {}
    resumed: set[int] = set()
    pending: list[RunSpec] = []
    resume: dict[int, dict[str, Any]] = {}
    for spec in runs:
        saved = checkpoints.load(spec.name) if checkpoints else None
        if saved is not None and saved.get("done"):
            results[spec.index] = saved["row"], saved["history"], saved.get("weights")
            resumed.add(spec.index)
            continue
        if saved is not None:
            print(f"resuming {spec.variant} fold {spec.fold} after epoch {len(saved['result']['history'])}",
                  file=sys.stderr)
            resume[spec.index] = saved
        pending.append(spec)
    reported = 0
    arrived: dict[int, list[tuple[str, Any]]] = {}  # what fanned-out runs still going reported, by run index
    fed: dict[int, int] = {}  # how many of a fanned-out run's epochs ``monitor`` has seen
    run_tags: dict[int, dict[str, Any]] = {}  # one tags dict per run, as fit passes (a new one: a new trace)

    def feed_arrived() -> None:
        """Feed ``monitor`` what arrived of the run whose turn it is (the first unreported), in order; what
        later runs sent waits for their turn. A resumed run's earlier epochs arrive at its end, so its live
        part waits too."""
        for kind, item in arrived.pop(reported, []):
            if monitor is None:
                continue
            done = fed.get(reported, 0)
            if kind == "epoch" and item["epoch"] == done + 1:
                monitor.on_epoch_end(item)
                fed[reported] = done + 1
            elif kind == "step" and math.ceil(item[1]) == done + 1:  # in (done, done + 1]: this epoch's
                tags, epoch, loss, lr = item
                monitor.on_step(run_tags.setdefault(reported, tags), epoch, torch.tensor(loss), lr)

    def on_live(spec: RunSpec, kind: str, item: Any) -> None:
        if spec.index >= reported:
            arrived.setdefault(spec.index, []).append((kind, item))
            feed_arrived()

    def report() -> None:
        """Feed ``monitor`` every run finished since the last call that all runs before it have joined."""
        nonlocal reported
        while reported < len(runs) and reported in results:
            row, history, _ = results[reported]
            if monitor is not None:
                if reported in resumed:
                    monitor.on_resume(history)
                elif fanout is not None:  # in this process, fit fed the epochs as they ended
                    for epoch in history[fed.pop(reported, 0):]:
                        monitor.on_epoch_end(epoch)
                monitor.on_fold_end(row)
            arrived.pop(reported, None)
            reported += 1
            feed_arrived()

    report()
    steps = monitor is not None and monitor.wants_steps
    finished = (fanout.run(data, num_classes, p, folds, pending, resume, on_live, steps, checkpoints)
                if fanout is not None else
                _in_process(data, num_classes, p, folds, pending, resume, monitor, checkpoints))
    for spec, row, history, weights in finished:
        if checkpoints:
            checkpoints.save(spec.name, {"done": True, "row": row, "history": history, "weights": weights})
        results[spec.index] = row, history, weights
        report()
    rows = [results[spec.index][0] for spec in runs]
    history = [epoch for spec in runs for epoch in results[spec.index][1]]
    runs_df = pd.DataFrame(rows)
    summary = {"k_folds": p.k_folds, **summarize(runs_df)}
    weights = {(spec.variant, spec.fold): results[spec.index][2] for spec in runs}
    kept, note = keep_fold_models(p, summary["chosen"], weights)
    return CVResult(pd.DataFrame(history), runs_df, summary, kept, note)


def keep_fold_models(p: Params, chosen: str, weights: dict[tuple[str, int], Weights | None]
                     ) -> tuple[dict[tuple[str, int], Weights], str]:
    """The fold models ``fold_models`` keeps of all runs' ``weights``, and a note saying which."""
    if p.fold_models == "none":
        return {}, "fold_models: none (crossval keeps no fold models)"
    keep = list(p.compared) if p.fold_models == "all" else [chosen]
    kept = {key: w for key, w in weights.items() if key[0] in keep and w is not None}
    which = "every compared variant" if p.fold_models == "all" else f"crossval's chosen variant, {chosen}"
    return kept, f"fold_models: {p.fold_models} (crossval keeps the fold models of {which})"

import copy
import dataclasses
import math
import random
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from foldwise.data.batches import Preloaded
from foldwise.training import engine
from foldwise.training.augment import Augmenter
from foldwise.training.callbacks import Monitor
from foldwise.training.engine import FitResult, choose_device, evaluate, fit, predict, seed_everything, train_one_epoch
from foldwise.training.models import build_model
from foldwise.training.optim import Schedule, l1_penalty, make_optimizer
from tests.conftest import RecordingSource, train_valid


def test_choose_device():
    assert choose_device("cpu").type == "cpu"
    assert choose_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="FOLDWISE_DEVICE='tpu' is not valid; use auto, cpu, cuda"):
        choose_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            choose_device("cuda")


def test_the_device_comes_from_foldwise_device_when_not_given(monkeypatch):
    from foldwise.training.engine import DEVICE_ENV

    monkeypatch.setenv(DEVICE_ENV, " CPU ")
    assert choose_device() == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "tpu")
    with pytest.raises(ValueError, match=r"^FOLDWISE_DEVICE='tpu' is not valid; use auto, cpu, cuda or cuda:N$"):
        choose_device()
    assert choose_device("cpu") == torch.device("cpu")  # an argument wins over the variable
    monkeypatch.delenv(DEVICE_ENV)
    assert choose_device().type == ("cuda" if torch.cuda.is_available() else "cpu")  # auto
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^FOLDWISE_DEVICE=cuda:1 but CUDA is not available; use auto or cpu$"):
            choose_device("cuda:1")


def test_seed_everything_repeats_pythons_numpys_and_torchs_global_draws_and_asks_for_deterministic_cudnn(
        monkeypatch):
    """Code added to a pipeline may draw from any global generator. NumPy takes seeds below 2**32, so a
    larger seed wraps round."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    seed = 2**32 + 5
    seed_everything(seed)
    draws = random.random(), np.random.random(), torch.rand(1).item()
    assert torch.backends.cudnn.deterministic is True and torch.backends.cudnn.benchmark is False
    assert draws == (random.Random(seed).random(), np.random.RandomState(5).random_sample(),
                     torch.rand(1, generator=torch.Generator().manual_seed(seed)).item())
    seed_everything(7)
    assert np.random.random() == np.random.RandomState(7).random_sample()


def test_fit_learns_and_is_deterministic(tiny_set, tiny_stats, tiny_params):
    train, valid = train_valid(tiny_set, tiny_stats)
    p = dataclasses.replace(tiny_params, epochs=4)
    runs = []
    for _ in range(2):
        seed_everything(1)
        model = build_model((1, 12, 12), 3, p)
        started = time.perf_counter()
        runs.append(fit(model, train, valid, p, seed=1, tags={"fold": 0}))
        elapsed = time.perf_counter() - started
        assert 0 < sum(r["seconds"] for r in runs[-1].history) <= elapsed  # each epoch's own wall time
    a, b = runs
    assert [r["valid_acc"] for r in a.history] == [r["valid_acc"] for r in b.history]
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert a.history[-1]["valid_acc"] > 0.8  # the synthetic classes are easy
    assert a.history[0]["fold"] == 0 and a.history[-1]["epoch"] == 4


def test_fit_keeps_the_best_epochs_weights(tiny_set, tiny_stats, tiny_params):
    train, valid = train_valid(tiny_set, tiny_stats)
    p = dataclasses.replace(tiny_params, epochs=5, lr=0.5, optimizer="sgd", scheduler="none")  # noisy on purpose
    seed_everything(0)
    model = build_model((1, 12, 12), 3, p)
    result = fit(model, train, valid, p, seed=0)
    accs = [r["valid_acc"] for r in result.history]
    assert result.best_epoch == accs.index(max(accs)) + 1
    model.load_state_dict(result.best_state)
    assert evaluate(model, valid).accuracy == pytest.approx(max(accs))


def test_weight_decay_and_momentum_reach_the_optimiser(tiny_params):
    model = build_model((1, 12, 12), 3, tiny_params)
    sgd = make_optimizer(model, dataclasses.replace(tiny_params, optimizer="sgd", weight_decay=0.01, momentum=0.5))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["weight_decay"] == 0.01 and sgd.param_groups[0]["momentum"] == 0.5
    adamw = make_optimizer(model, dataclasses.replace(tiny_params, optimizer="adamw", weight_decay=0.02))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.02
    # the fused kernels (one per step, not one per parameter tensor): the CPU speed-up in benchmarks/
    assert sgd.param_groups[0]["fused"] is True and adamw.param_groups[0]["fused"] is True


def test_each_optimiser_gets_its_class_and_every_setting(tiny_params):
    """Adam is Adam (L2 added to the gradient), not AdamW (decay applied apart); the lr reaches each;
    Nesterov only with momentum (torch refuses it without); fused kernels only on devices that have them."""
    model = build_model((1, 12, 12), 3, tiny_params)

    def group(**changes):
        optimizer = make_optimizer(model, dataclasses.replace(tiny_params, lr=0.003, **changes))
        return type(optimizer), optimizer.param_groups[0]

    cls, adam = group(optimizer="adam", weight_decay=0.01)
    assert cls is torch.optim.Adam and (adam["lr"], adam["weight_decay"]) == (0.003, 0.01)
    cls, adamw = group(optimizer="adamw")
    assert cls is torch.optim.AdamW and adamw["lr"] == 0.003
    cls, sgd = group(optimizer="sgd", momentum=0.5, nesterov=True)
    assert cls is torch.optim.SGD and sgd["lr"] == 0.003 and sgd["nesterov"] is True
    assert group(optimizer="sgd", momentum=0.5, nesterov=False)[1]["nesterov"] is False
    assert group(optimizer="sgd", momentum=0.0, nesterov=True)[1]["nesterov"] is False
    on_meta = build_model((1, 12, 12), 3, tiny_params).to("meta")  # a device without fused kernels
    assert not make_optimizer(on_meta, dataclasses.replace(tiny_params, optimizer="sgd")).param_groups[0]["fused"]


def lrs(p, steps_per_epoch=4, losses=None):
    """The learning rate of every batch of a run of ``p``, stepping the schedule as fit does."""
    model = build_model((1, 12, 12), 3, p)
    optimizer = make_optimizer(model, p)
    schedule = Schedule(optimizer, p, steps_per_epoch)
    seen = []
    for epoch in range(p.epochs):
        for _ in range(steps_per_epoch):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.after_batch()
        schedule.after_epoch(losses[epoch] if losses else 1.0)
    return seen


def test_schedules_follow_their_torch_counterparts(tiny_params):
    p = dataclasses.replace(tiny_params, optimizer="sgd", lr=0.1, epochs=4)
    model = build_model((1, 12, 12), 3, p)
    for name, reference in [
        ("onecycle", lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=16)),
        ("cosine", lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=16)),
    ]:
        optimizer = make_optimizer(model, p)
        scheduler, expected = reference(optimizer), []
        for _ in range(16):
            expected.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        assert lrs(dataclasses.replace(p, scheduler=name)) == pytest.approx(expected, abs=1e-9), name
    step = lrs(dataclasses.replace(p, scheduler="step", step_size=2, gamma=0.5))
    assert step == pytest.approx([0.1] * 8 + [0.05] * 8)
    assert lrs(dataclasses.replace(p, scheduler="none")) == pytest.approx([0.1] * 16)


def test_plateau_decays_on_the_valid_loss(tiny_params):
    p = dataclasses.replace(tiny_params, optimizer="sgd", lr=0.1, epochs=4, scheduler="plateau",
                            plateau_patience=1, gamma=0.1)
    seen = lrs(p, steps_per_epoch=1, losses=[1.0, 2.0, 2.0, 2.0])  # no improvement after epoch 1
    assert seen == pytest.approx([0.1, 0.1, 0.1, 0.01])


def test_a_plateau_schedule_resumes_with_what_it_had_seen(tiny_params):
    """One bad epoch seen, saved, restored: the next bad epoch drops the lr (patience 1), as it would
    have without the interruption; a fresh plateau would wait for two."""
    p = dataclasses.replace(tiny_params, optimizer="sgd", lr=0.1, epochs=6, scheduler="plateau",
                            plateau_patience=1, gamma=0.1)

    def started():
        optimizer = make_optimizer(build_model((1, 12, 12), 3, p), p)
        return optimizer, Schedule(optimizer, p, steps_per_epoch=1)

    optimizer, schedule = started()
    for loss in (1.0, 2.0):
        schedule.after_batch()
        schedule.after_epoch(loss)
    state = schedule.state_dict()
    assert state["plateau"]["num_bad_epochs"] == 1 and state["steps"] == 2
    optimizer, resumed = started()
    resumed.load_state_dict(state)
    resumed.after_batch()
    resumed.after_epoch(2.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


@pytest.mark.parametrize("name", ["none", "step", "cosine", "plateau", "onecycle"])
def test_warmup_rises_linearly_from_a_hundredth(tiny_params, name):
    p = dataclasses.replace(tiny_params, optimizer="sgd", lr=0.1, epochs=4, scheduler=name, warmup_epochs=1)
    seen = lrs(p, steps_per_epoch=4)
    if name == "onecycle":  # its own rising phase, made to last the warm-up epochs
        assert seen.index(max(seen)) == 3 and seen[0] == pytest.approx(0.004)  # peak: end of warm-up
    else:
        assert seen[:5] == pytest.approx([0.001, 0.02575, 0.0505, 0.07525, 0.1])
        # after the warm-up: the schedule's own course from lr, never above it
        after = {"cosine": [0.05 * (1 + math.cos(math.pi * s / 12)) for s in range(12)]}.get(name, [0.1] * 12)
        assert seen[4:] == pytest.approx(after, abs=1e-12)


def test_a_plateau_after_warm_up_counts_the_epoch_that_ends_it(tiny_params):
    """The warm-up's last epoch is the plateau's first: a worse loss right after it already counts
    (patience 0), so the lr drops after the second epoch."""
    p = dataclasses.replace(tiny_params, optimizer="sgd", lr=0.1, epochs=3, scheduler="plateau",
                            plateau_patience=0, gamma=0.1, warmup_epochs=1)
    assert lrs(p, steps_per_epoch=1, losses=[1.0, 2.0, 2.0]) == pytest.approx([0.001, 0.1, 0.01])


def test_step_lr_decays_between_epochs_in_fit(tiny_set, tiny_stats, tiny_params):
    train, valid = train_valid(tiny_set, tiny_stats)
    p = dataclasses.replace(tiny_params, optimizer="sgd", scheduler="step", step_size=1, gamma=0.5, lr=0.1, epochs=3)
    result = fit(build_model((1, 12, 12), 3, p), train, valid, p, seed=0)
    assert [r["lr"] for r in result.history] == pytest.approx([0.1, 0.05, 0.025])


def test_l1_term_is_in_the_loss(tiny_set, tiny_stats, tiny_params):
    """One plain SGD step on one batch: the L1 run moves every weight by lr x l1 x sign(w) more."""
    train, valid = train_valid(tiny_set, tiny_stats)
    after = []
    for l1 in (0.0, 0.01):
        p = dataclasses.replace(tiny_params, model="softmax", l1=l1, epochs=1, batch_size=60, optimizer="sgd",
                                momentum=0.0, lr=0.5, scheduler="none")
        seed_everything(0)
        model = build_model((1, 12, 12), 3, p)
        start = model[1].weight.detach().clone()
        fit(model, train, valid, p, seed=0)
        after.append(model[1].weight.detach())
    assert torch.allclose(after[1] - after[0], -0.5 * 0.01 * start.sign(), atol=1e-6)
    assert l1_penalty(model) == model[1].weight.abs().sum()  # weights only, not the bias


def test_a_broken_monitor_never_stops_training(tiny_set, tiny_stats, tiny_params, capsys):
    class Broken(Monitor):
        def on_epoch_end(self, row):
            raise ConnectionError("server gone")

    train, valid = train_valid(tiny_set, tiny_stats)
    result = fit(build_model((1, 12, 12), 3, tiny_params), train, valid, tiny_params, seed=0, monitor=Broken())
    assert len(result.history) == tiny_params.epochs
    assert "server gone" in capsys.readouterr().err


def test_early_stopping_stops_and_restores_the_best_weights(tiny_set, tiny_stats, tiny_params):
    train, valid = train_valid(tiny_set, tiny_stats)
    # a learning rate far too high makes the valid loss bounce: early stopping must step in
    p = dataclasses.replace(tiny_params, epochs=12, lr=2.0, optimizer="sgd", scheduler="none", patience=2)
    seed_everything(0)
    model = build_model((1, 12, 12), 3, p)
    result = fit(model, train, valid, p, seed=0)
    losses = [r["valid_loss"] for r in result.history]
    assert result.stopped_early and len(losses) < 12
    assert result.best_epoch == losses.index(min(losses)) + 1 and len(losses) == result.best_epoch + 2
    assert result.restored_best and result.final == result.history[result.best_epoch - 1]
    assert evaluate(model, valid).loss == pytest.approx(min(losses), rel=1e-5)  # the model holds the best weights


def test_augmentation_touches_training_batches_only(tiny_set, tiny_stats, tiny_params):
    """A softmax model with a learning rate too small to learn: the train loss is the loss of the
    batches it saw. Without augmentation it equals the evaluation loss; with it, it does not."""
    train, _ = train_valid(tiny_set, tiny_stats)
    source = train
    losses = {}
    for augment in (False, True):
        p = dataclasses.replace(tiny_params, model="softmax", augment=augment, augment_padding=3, lr=1e-12,
                                optimizer="sgd", momentum=0.0)
        seed_everything(0)
        model = build_model((1, 12, 12), 3, p)
        augmenter = Augmenter(p, 0) if augment else None
        losses[augment] = train_one_epoch(model, source, make_optimizer(model, p), p,
                                          torch.Generator().manual_seed(0), augmenter=augmenter)[0]
        losses[f"eval{augment}"] = evaluate(model, source).loss
    assert losses[False] == pytest.approx(losses["evalFalse"], rel=1e-5)
    assert abs(losses[True] - losses["evalTrue"]) > 1e-3


def sgd_params(tiny_params, **changes):
    """Plain SGD (no momentum, decay, schedule or warm-up) on a softmax model: updates by hand are easy."""
    return dataclasses.replace(tiny_params, model="softmax", optimizer="sgd", momentum=0.0, weight_decay=0.0,
                               l1=0.0, scheduler="none", warmup_epochs=0, **changes)


def test_train_one_epoch_reports_the_loss_and_accuracy_of_every_batch_it_trained_on(tiny_set, tiny_stats,
                                                                                   tiny_params):
    """lr 0 keeps the weights fixed, so the epoch's loss and accuracy must equal those of the fixed model
    over all 60 images; the batches (16, 16, 16, 12) weigh by their size."""
    train, _ = train_valid(tiny_set, tiny_stats)
    p = sgd_params(tiny_params, lr=0.0, batch_size=16)
    seed_everything(0)
    model = build_model((1, 12, 12), 3, p)
    source = RecordingSource(train.x, train.labels)
    loss, acc = train_one_epoch(model, source, make_optimizer(model, p), p, torch.Generator().manual_seed(0))
    assert [len(y) for _, y in source.seen] == [16, 16, 16, 12]
    x, y = torch.cat([b[0] for b in source.seen]), torch.cat([b[1] for b in source.seen])
    order = source.orders[0]
    assert sorted(order.tolist()) == list(range(60)) and torch.equal(x, train.x[order])  # every image once
    with torch.no_grad():
        logits = model(x)
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert acc == (logits.argmax(1) == y).sum().item() / 60
    assert 0.05 < acc < 0.95  # an untrained model: a value the batches' weighting can move


@pytest.mark.parametrize("n, sizes", [(33, [16, 16]), (34, [16, 16, 2]), (32, [16, 16]), (17, [16]), (16, [16]),
                                     (1, [1])])
def test_only_a_trailing_batch_of_one_image_is_dropped(tiny_params, n, sizes):
    """BatchNorm cannot train on one image, so 2 x 16 + 1 images train on 32 (in shuffled order); every
    other count trains whole, and a set of a single image (a model without BatchNorm) keeps it."""
    p = sgd_params(tiny_params, lr=0.01, batch_size=16)
    torch.manual_seed(0)
    hidden = [nn.Linear(144, 8), nn.BatchNorm1d(8), nn.ReLU()] if n > 1 else []
    model = nn.Sequential(nn.Flatten(), *hidden, nn.Linear(8 if hidden else 144, 3))
    source = RecordingSource(torch.randn(n, 1, 12, 12, generator=torch.Generator().manual_seed(1)), torch.arange(n) % 3)
    loss, _ = train_one_epoch(model, source, make_optimizer(model, p), p, torch.Generator().manual_seed(0))
    assert [len(y) for _, y in source.seen] == sizes and math.isfinite(loss)
    assert len(set(source.orders[0].tolist())) == sum(sizes)
    if n > 1:
        assert source.orders[0].tolist() != sorted(source.orders[0].tolist())  # still shuffled


def test_two_steps_of_train_one_epoch_equal_two_sgd_updates_by_hand(tiny_set, tiny_stats, tiny_params):
    """w1 = w0 - lr * grad(batch 1 at w0), w2 = w1 - lr * grad(batch 2 at w1): gradients must not pile up
    from one batch to the next (zero_grad), and the reported loss is that of the weights each batch met."""
    train, _ = train_valid(tiny_set, tiny_stats)
    p = sgd_params(tiny_params, lr=0.5, batch_size=30)
    seed_everything(0)
    model = build_model((1, 12, 12), 3, p)
    by_hand = copy.deepcopy(model)
    source = RecordingSource(train.x, train.labels)
    loss, acc = train_one_epoch(model, source, make_optimizer(model, p), p, torch.Generator().manual_seed(0))
    assert len(source.seen) == 2
    losses, correct = [], 0
    for x, y in source.seen:
        logits = by_hand(x)
        step_loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(step_loss, list(by_hand.parameters()))
        with torch.no_grad():
            for weight, grad in zip(by_hand.parameters(), grads):
                weight -= 0.5 * grad
        losses.append(step_loss.item())
        correct += (logits.argmax(1) == y).sum().item()
    for ours, theirs in zip(model.parameters(), by_hand.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert loss == pytest.approx(sum(losses) / 2, rel=1e-6) and acc == correct / 60
    assert losses[1] < losses[0]  # the second batch met the updated weights


def dropout_batchnorm_params(tiny_params):
    """LeNet with dropout and BatchNorm: its output in train mode differs from eval mode."""
    return dataclasses.replace(tiny_params, model="lenet", batchnorm=True, dropout=0.5)


def test_predict_runs_in_eval_mode(tiny_set, tiny_stats, tiny_params):
    train, valid = train_valid(tiny_set, tiny_stats)
    p = dropout_batchnorm_params(tiny_params)
    seed_everything(0)
    model = build_model((1, 12, 12), 3, p)
    train_one_epoch(model, train, make_optimizer(model, p), p, torch.Generator().manual_seed(0))  # BN statistics
    model.train()  # as fit leaves it after an epoch
    logits = predict(model, Preloaded(valid.x))
    with torch.no_grad():
        expected = model.eval()(valid.x)
        in_train_mode = model.train()(valid.x)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(in_train_mode, expected, atol=1e-3)  # the check can tell the two apart


def test_fit_validates_unaugmented_images_in_eval_mode(tiny_set, tiny_stats, tiny_params):
    """Every epoch's valid loss and accuracy equal a plain eval-mode pass over the untouched valid
    images with that epoch's weights (from its checkpoint), even with augmentation, dropout and BN."""
    train, valid = train_valid(tiny_set, tiny_stats)
    p = dataclasses.replace(dropout_batchnorm_params(tiny_params), epochs=3, augment=True, augment_padding=3,
                            augment_flip=True)
    states = []
    seed_everything(0)
    model = build_model((1, 12, 12), 3, p)
    source = RecordingSource(valid.x, valid.labels)
    result = fit(model, train, source, p, seed=0, checkpoint=lambda s: states.append(copy.deepcopy(s["model"])))
    assert not source.trained and all(torch.equal(x, valid.x[: len(x)]) for x, _ in source.seen[:1])
    for row, state in zip(result.history, states, strict=True):
        check = build_model((1, 12, 12), 3, p)
        check.load_state_dict(state)
        with torch.no_grad():
            logits = check.eval()(valid.x)
        assert row["valid_loss"] == pytest.approx(F.cross_entropy(logits, valid.labels).item(), rel=1e-5)
        assert row["valid_acc"] == pytest.approx((logits.argmax(1) == valid.labels).float().mean().item())


def test_fit_resumed_from_a_checkpoint_matches_an_uninterrupted_run(tiny_set, tiny_stats, tiny_params):
    train, valid = train_valid(tiny_set, tiny_stats)
    p = dataclasses.replace(tiny_params, epochs=4, dropout=0.3, augment=True, scheduler="onecycle")
    states = []
    seed_everything(3)
    whole_model = build_model((1, 12, 12), 3, p)
    # deep copies: the state holds the live weights, which later epochs change
    whole = fit(whole_model, train, valid, p, seed=3, checkpoint=lambda s: states.append(copy.deepcopy(s)))
    assert len(states) == 4
    seed_everything(3)
    torch.manual_seed(999)  # the global stream (dropout) must come from the checkpoint, not from here
    resumed_model = build_model((1, 12, 12), 3, p)
    resumed = fit(resumed_model, train, valid, p, seed=3, resume=states[1])  # killed after epoch 2
    assert [r["valid_loss"] for r in resumed.history] == [r["valid_loss"] for r in whole.history]
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in whole.history]
    for a, b in zip(whole_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)


class Seen(Monitor):
    """Keeps every step, epoch row and set of predictions a run reports."""

    wants_steps = wants_predictions = True

    def __init__(self):
        self.steps, self.rows, self.predictions = [], [], []

    def on_step(self, tags, epoch, loss, lr):
        self.steps.append((tags, epoch, float(loss), lr))

    def on_epoch_end(self, row):
        self.rows.append(row)

    def on_predictions(self, tags, labels, predicted):
        self.predictions.append((tags, labels.clone(), predicted.clone()))


def test_monitors_see_every_step_on_an_epoch_axis_and_every_epochs_predictions(tiny_set, tiny_stats, tiny_params):
    train, valid = train_valid(tiny_set, tiny_stats)
    p = sgd_params(tiny_params, lr=0.1, batch_size=16, epochs=2)
    seen, states = Seen(), []
    seed_everything(0)
    model = build_model((1, 12, 12), 3, p)
    result = fit(model, train, valid, p, seed=0, monitor=seen, tags={"fold": 1},
                 checkpoint=lambda s: states.append(copy.deepcopy(s["model"])))
    assert [(t, e, lr) for t, e, _, lr in seen.steps] == [({"fold": 1}, e / 4, 0.1) for e in range(1, 9)]
    assert all(0 < loss < 5 for *_, loss, _ in seen.steps)
    assert seen.rows == result.history
    assert set(result.history[0]) == {"fold", "epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "lr",
                                      "seconds"}
    for epoch, ((tags, labels, predicted), state) in enumerate(zip(seen.predictions, states, strict=True), 1):
        check = build_model((1, 12, 12), 3, p)
        check.load_state_dict(state)
        with torch.no_grad():
            expected = check(valid.x).argmax(1)
        assert tags == {"fold": 1, "epoch": epoch} and torch.equal(labels, valid.labels)
        assert torch.equal(predicted, expected)
    one_batch = Seen()  # an epoch of a single batch still ends at a whole epoch
    fit(build_model((1, 12, 12), 3, p), train, valid, dataclasses.replace(p, batch_size=64), seed=0,
        monitor=one_batch)
    assert [e for _, e, _, _ in one_batch.steps] == [1.0, 2.0]


def test_fit_shuffles_from_its_seed_alone_and_augments_only_when_asked(tiny_set, tiny_stats, tiny_params):
    """Same seed, same run whatever the global random state; another seed, other batches. Augmentation
    changes the training batches only when ``augment`` is on."""
    train, valid = train_valid(tiny_set, tiny_stats)

    def losses(p, seed, global_seed):
        torch.manual_seed(0)
        model = build_model((1, 12, 12), 3, p)
        torch.manual_seed(global_seed)
        return [r["train_loss"] for r in fit(model, train, valid, p, seed=seed).history]

    p = sgd_params(tiny_params, lr=0.1, batch_size=16, epochs=2)
    base = losses(p, 1, 0)
    assert losses(p, 1, 123) == base and losses(p, 2, 0) != base
    # augment off: its settings (padding 2, flips where the dataset allows them) change nothing
    assert losses(dataclasses.replace(p, augment_padding=0, augment_flip=False), 1, 0) == base
    augmented = dataclasses.replace(p, augment=True, augment_padding=3)
    assert losses(augmented, 1, 0) != base and losses(augmented, 1, 7) == losses(augmented, 1, 0)


def test_patience_zero_keeps_the_last_weights_and_patience_one_stops_after_one_bad_epoch(tiny_set, tiny_stats,
                                                                                         tiny_params):
    train, valid = train_valid(tiny_set, tiny_stats)
    p = dataclasses.replace(tiny_params, epochs=12, lr=2.0, optimizer="sgd", scheduler="none")  # bouncing
    seed_everything(0)
    model = build_model((1, 12, 12), 3, p)
    result = fit(model, train, valid, dataclasses.replace(p, patience=0), seed=0)
    assert len(result.history) == 12 and not result.restored_best and result.final == result.history[-1]
    assert evaluate(model, valid).loss == pytest.approx(result.history[-1]["valid_loss"], rel=1e-5)
    seed_everything(0)
    model = build_model((1, 12, 12), 3, p)
    result = fit(model, train, valid, dataclasses.replace(p, patience=1), seed=0)
    losses = [r["valid_loss"] for r in result.history]
    assert result.stopped_early and len(losses) == result.best_epoch + 1 < 12
    assert losses[-1] >= min(losses[:-1])
    # patience 1 is early stopping too: the model ends with the best epoch's weights, not the last's
    assert result.restored_best and result.final == result.history[result.best_epoch - 1]
    assert evaluate(model, valid).loss == pytest.approx(min(losses), rel=1e-5)
    assert losses[-1] != pytest.approx(min(losses), rel=1e-5)  # the last epoch's weights would fail the line above


@pytest.mark.parametrize("patience, best", [(0, 2), (3, 1)])
def test_the_best_epoch_is_the_highest_accuracy_without_early_stopping_else_the_lowest_loss(patience, best,
                                                                                           tiny_params):
    """Epoch 2 has the higher accuracy, epoch 1 the lower loss: which one is best depends on patience."""
    p = dataclasses.replace(tiny_params, epochs=3, patience=patience)
    model = nn.Linear(2, 2)
    result = FitResult()
    result.add_epoch({"epoch": 1, "valid_loss": 0.5, "valid_acc": 0.70}, model, p)
    result.add_epoch({"epoch": 2, "valid_loss": 0.6, "valid_acc": 0.80}, model, p)
    assert result.best_epoch == best and result.bad_epochs == 2 - best
    assert result.best_value == (0.80 if patience == 0 else 0.5)


def test_evaluate_gives_each_images_predicted_class_and_its_softmax_probability(tiny_set, tiny_stats, tiny_params):
    _, valid = train_valid(tiny_set, tiny_stats)
    seed_everything(0)
    model = build_model((1, 12, 12), 3, tiny_params)
    result = evaluate(model, valid)
    probabilities = F.softmax(predict(model, valid), 1)
    assert torch.equal(result.predicted, probabilities.argmax(1))
    torch.testing.assert_close(result.confidence, probabilities.max(1).values)
    assert result.accuracy == pytest.approx((result.predicted == valid.labels).float().mean().item())


@pytest.mark.parametrize("epochs, ran, stopped", [(5, 3, True), (3, 3, False)])
def test_a_valid_loss_that_only_ties_is_no_improvement(tiny_params, epochs, ran, stopped):
    """A model whose inputs are all zero has the same valid loss (log 3) every epoch: the first epoch stays
    the best, patience 2 runs out after epoch 3, and running out on the last epoch is no early stop."""
    p = sgd_params(tiny_params, lr=0.1, batch_size=16, epochs=epochs, patience=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 3, bias=False))
    zeros = Preloaded(torch.zeros(20, 1, 12, 12), torch.arange(20) % 3)
    result = fit(model, zeros, zeros, p, seed=0)
    assert [r["valid_loss"] for r in result.history] == pytest.approx([math.log(3)] * ran)
    assert result.best_epoch == 1 and result.bad_epochs == 2 and result.stopped_early is stopped


def test_plateau_in_fit_follows_torch_on_the_valid_losses_it_saw(tiny_set, tiny_stats, tiny_params):
    train, valid = train_valid(tiny_set, tiny_stats)
    p = dataclasses.replace(tiny_params, epochs=8, lr=2.0, optimizer="sgd", scheduler="plateau", plateau_patience=0,
                            gamma=0.5)
    seed_everything(0)
    result = fit(build_model((1, 12, 12), 3, p), train, valid, p, seed=0)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    replay = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=0)
    expected = []
    for row in result.history:
        expected.append(optimizer.param_groups[0]["lr"])
        replay.step(row["valid_loss"])
    assert [r["lr"] for r in result.history] == pytest.approx(expected)
    assert len(set(expected)) > 1  # it did decay


def test_label_smoothing_trains_on_torchs_smoothed_loss_and_reports_the_true_class_cross_entropy(
        tiny_set, tiny_stats, tiny_params):
    """Two SGD steps by hand with ``cross_entropy(label_smoothing=0.2)``; the epoch's reported loss is
    the plain cross-entropy, so it compares with runs without smoothing."""
    train, _ = train_valid(tiny_set, tiny_stats)
    p = sgd_params(tiny_params, lr=0.5, batch_size=30, label_smoothing=0.2)
    seed_everything(0)
    model = build_model((1, 12, 12), 3, p)
    by_hand = copy.deepcopy(model)
    source = RecordingSource(train.x, train.labels)
    loss, _ = train_one_epoch(model, source, make_optimizer(model, p), p, torch.Generator().manual_seed(0))
    plain = []
    for x, y in source.seen:
        logits = by_hand(x)
        grads = torch.autograd.grad(F.cross_entropy(logits, y, label_smoothing=0.2), list(by_hand.parameters()))
        with torch.no_grad():
            for weight, grad in zip(by_hand.parameters(), grads):
                weight -= 0.5 * grad
        plain.append(F.cross_entropy(logits, y).item())
    for ours, theirs in zip(model.parameters(), by_hand.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert loss == pytest.approx(sum(plain) / 2, rel=1e-6)


def test_batchnorm_parameters_learn_at_bn_lr_factor_times_lr_through_the_whole_schedule(tiny_params):
    p = dataclasses.replace(tiny_params, model="lenet", batchnorm=True, optimizer="sgd", lr=0.1, epochs=3,
                            scheduler="onecycle", bn_lr_factor=3.0)
    model = build_model((1, 12, 12), 3, p)
    optimizer = make_optimizer(model, p)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms
    rest, bn = optimizer.param_groups
    assert {id(t) for t in bn["params"]} == {id(t) for m in norms for t in m.parameters()}
    assert len(rest["params"]) + len(bn["params"]) == len(list(model.parameters()))
    schedule = Schedule(optimizer, p, 10)  # 30 steps: one-cycle's peak is step 8 (0.3 x 30 - 1)
    peaks = [0.0, 0.0]
    for _ in range(30):
        assert bn["lr"] == pytest.approx(3 * rest["lr"], rel=1e-9)
        peaks = [max(peak, group["lr"]) for peak, group in zip(peaks, optimizer.param_groups)]
        optimizer.step()
        schedule.after_batch()
    assert peaks == pytest.approx([0.1, 0.3], rel=1e-6)  # one-cycle peaks at each group's own rate
    assert len(make_optimizer(model, dataclasses.replace(p, bn_lr_factor=1.0)).param_groups) == 1
    plain = dataclasses.replace(p, batchnorm=False)  # no BatchNorm: no empty second group for the factor
    assert len(make_optimizer(build_model((1, 12, 12), 3, plain), plain).param_groups) == 1


@pytest.mark.parametrize("recipe", [{"augment_flip": "alternate", "label_smoothing": 0.1, "bn_lr_factor": 2.0},
                                    {"ema": 0.9}, {"ema": 0.9, "patience": 1}])
def test_a_run_with_the_speed_run_recipes_resumes_exactly(tiny_set, tiny_stats, tiny_params, recipe):
    train, valid = train_valid(tiny_set, tiny_stats)
    p = dataclasses.replace(tiny_params, model="lenet", epochs=3, augment=True, **recipe)
    states = []
    seed_everything(3)
    whole_model = build_model((1, 12, 12), 3, p)
    whole = fit(whole_model, train, valid, p, seed=3, checkpoint=lambda s: states.append(copy.deepcopy(s)))
    seed_everything(3)
    resumed_model = build_model((1, 12, 12), 3, p)
    resumed = fit(resumed_model, train, valid, p, seed=3, resume=states[0])
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in whole.history]
    for a, b in zip(whole_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)


def test_the_moving_average_is_decay_times_itself_plus_the_rest_times_the_new_weights(tiny_set, tiny_stats,
                                                                                       tiny_params):
    """One step per epoch (30 images, batches of 30): after step 1 the average is w1, after step 2
    0.7 w1 + 0.3 w2, for weights and BatchNorm's running statistics alike."""
    from foldwise.training.engine import moving_average

    train, _ = train_valid(tiny_set, tiny_stats)
    train = train.subset(np.arange(30))
    p = dataclasses.replace(tiny_params, model="lenet", batchnorm=True, batch_size=30, ema=0.7)
    seed_everything(0)
    model = build_model((1, 12, 12), 3, p)
    optimizer, average = make_optimizer(model, p), moving_average(model, 0.7)
    seen = []
    for epoch in (1, 2):
        train_one_epoch(model, train, optimizer, p, torch.Generator().manual_seed(epoch), average=average)
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
    averaged = average.module.state_dict()
    floats = [k for k, v in seen[0].items() if v.is_floating_point()]
    assert any("running_mean" in k for k in floats)
    for k in floats:
        torch.testing.assert_close(averaged[k], 0.7 * seen[0][k] + 0.3 * seen[1][k])
        assert not torch.equal(seen[0][k], seen[1][k])


def test_with_ema_fit_validates_and_keeps_the_average_and_trains_the_weights_as_without(tiny_set, tiny_stats,
                                                                                        tiny_params):
    train, valid = train_valid(tiny_set, tiny_stats)
    p = dataclasses.replace(tiny_params, model="lenet", epochs=3)
    runs = {}
    for decay in (0.0, 0.8):
        seed_everything(5)
        model = build_model((1, 12, 12), 3, p)
        states: list = []
        result = fit(model, train, valid, dataclasses.replace(p, ema=decay), seed=5,
                     checkpoint=lambda s, states=states: states.append(copy.deepcopy(s)))
        runs[decay] = model, result, states
    plain, averaged = runs[0.0], runs[0.8]
    for a, b in zip(plain[2][-1]["model"].values(), averaged[2][-1]["model"].values()):
        assert torch.equal(a, b)  # the weights trained are the same: the average only watches them
    assert [r["train_loss"] for r in plain[1].history] == [r["train_loss"] for r in averaged[1].history]
    model, result, _ = averaged
    assert result.history[-1]["valid_loss"] == pytest.approx(evaluate(model, valid).loss, rel=1e-6)
    assert result.history[-1]["valid_loss"] != plain[1].history[-1]["valid_loss"]
    kept = dict(model.state_dict())
    for key, value in averaged[2][-1]["average"].items():
        if key.startswith("module."):
            assert torch.equal(kept[key.removeprefix("module.")], value)  # the model ends with the average


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_the_losses_are_torchs_cross_entropy_to_the_bit_and_their_gradients_too(smoothing):
    """Without smoothing, training takes torch's ``cross_entropy`` bit for bit (the committed
    results are unchanged by the smoothing code); with it, torch's ``label_smoothing``."""
    from foldwise.training.engine import _losses

    logits = torch.randn(37, 10, generator=torch.Generator().manual_seed(0)) * 3
    y = torch.randint(0, 10, (37,), generator=torch.Generator().manual_seed(1))
    ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    true_class, objective = _losses(ours, y, smoothing)
    reference = F.cross_entropy(theirs, y, label_smoothing=smoothing)
    objective.backward()
    reference.backward()
    assert torch.equal(true_class, F.cross_entropy(logits, y))
    if smoothing == 0:
        assert torch.equal(objective, reference) and torch.equal(ours.grad, theirs.grad)
    else:
        torch.testing.assert_close(objective, reference)
        torch.testing.assert_close(ours.grad, theirs.grad)


def test_bf16_precision_trains_on_a_cpu_in_bfloat16_and_validates_in_float32(tiny_set, tiny_stats, tiny_params):
    """``precision: bf16`` autocasts training's forward passes (the layers compute in bfloat16); validation
    and predictions stay float32, as the exported model runs; the run learns and repeats; fp32 never casts."""
    train, valid = train_valid(tiny_set, tiny_stats)
    runs, seen = [], []
    for precision in ("bf16", "bf16", "fp32"):
        p = dataclasses.replace(tiny_params, model="lenet", batchnorm=True, epochs=4, precision=precision)
        seed_everything(1)
        model = build_model((1, 12, 12), 3, p)
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        dtypes: list[tuple[bool, torch.dtype]] = []
        conv.register_forward_hook(lambda m, args, out, dtypes=dtypes: dtypes.append((m.training, out.dtype)))
        runs.append(fit(model, train, valid, p, seed=1))
        seen.append(dtypes)
    bf16, again, fp32 = runs
    assert {d for training, d in seen[0] if training} == {torch.bfloat16}
    assert {d for training, d in seen[0] if not training} == {torch.float32}  # validation
    assert {d for _, d in seen[2]} == {torch.float32}
    assert [r["train_loss"] for r in bf16.history] == [r["train_loss"] for r in again.history]
    assert [r["train_loss"] for r in bf16.history] != [r["train_loss"] for r in fp32.history]
    assert bf16.history[-1]["valid_acc"] > 0.8


def test_bf16_is_called_slow_on_cpus_without_amx_or_with_onednn_capped_below_it():
    """bfloat16 pays only with AMX (benchmarks/precision.md): without it, or with oneDNN capped below it, a
    bf16 run gets a reason; fp32, CUDA and CPUs whose flags are unknown (not Linux x86) get none."""
    cpu, amx = torch.device("cpu"), {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    assert engine.bf16_slow_reason(cpu, "bf16", amx, {}) is None
    assert "no AMX" in engine.bf16_slow_reason(cpu, "bf16", amx - {"amx_bf16"}, {})
    assert "no AMX" in engine.bf16_slow_reason(cpu, "bf16", {"avx2"}, {})
    assert engine.bf16_slow_reason(cpu, "fp32", {"avx2"}, {}) is None
    assert engine.bf16_slow_reason(cpu, "bf16", None, {}) is None
    assert engine.bf16_slow_reason(torch.device("cuda"), "bf16", {"avx2"}, {}) is None
    for cap in ("AVX2", "AVX512_CORE_BF16"):
        assert engine.bf16_slow_reason(cpu, "bf16", amx, {"ONEDNN_MAX_CPU_ISA": cap}) == (
            f"ONEDNN_MAX_CPU_ISA={cap} keeps oneDNN from AMX")
    assert "DNNL_MAX_CPU_ISA=AVX2" in engine.bf16_slow_reason(cpu, "bf16", amx, {"DNNL_MAX_CPU_ISA": "AVX2"})
    for cap in ("AVX512_CORE_AMX", "avx10_1_512_amx_fp16", "ALL", ""):
        assert engine.bf16_slow_reason(cpu, "bf16", amx, {"ONEDNN_MAX_CPU_ISA": cap}) is None


def test_cpu_flags_agree_with_the_instructions_torch_found():
    """torch detects the CPU's instruction set on its own (cpuid): the flags must name what it found."""
    flags = engine.cpu_flags()
    if flags is None:
        pytest.skip("no x86 flags in /proc/cpuinfo here")
    found = torch.backends.cpu.get_cpu_capability()  # ATEN_CPU_CAPABILITY can only lower it
    assert "fpu" in flags and ("avx2" in flags or found not in ("AVX2", "AVX512"))
    assert "avx512f" in flags or found != "AVX512"


def test_fit_warns_once_per_process_when_bf16_will_train_slowly(tiny_set, tiny_stats, tiny_params, monkeypatch,
                                                                 capsys):
    """The warning names the reason and the way out, once however many runs the process trains; the run
    itself goes on in bf16 (what the params ask for)."""
    if engine.cpu_flags() is None:
        pytest.skip("no x86 flags in /proc/cpuinfo here: the check stays silent")
    monkeypatch.setattr(engine, "_warned", set())
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # read by the check; oneDNN is already set up
    train, valid = train_valid(tiny_set, tiny_stats)
    errs = []
    for precision in ("fp32", "bf16", "bf16"):
        p = dataclasses.replace(tiny_params, model="lenet", epochs=1, precision=precision)
        fit(build_model((1, 12, 12), 3, p), train, valid, p, seed=1)
        errs.append(capsys.readouterr().err)
    fp32, first, second = errs
    assert "warning" not in fp32 and "warning" not in second
    assert ("warning: precision: bf16 trains slower than fp32 on this machine: ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 "
            "keeps oneDNN from AMX") in first and "-S precision=fp32" in first

import dataclasses

import pytest
import torch

from foldwise.engine import (choose_device, evaluate, fit, l1_penalty, make_optimizer, make_scheduler,
                             seed_everything, to_inputs)
from foldwise.models import build_model
from foldwise.monitor import Monitor


def data(tiny_set, tiny_stats):
    x = to_inputs(tiny_set.images, tiny_stats, torch.device("cpu"))
    return (x[:60], tiny_set.labels[:60]), (x[60:], tiny_set.labels[60:])


def test_choose_device():
    assert choose_device("cpu").type == "cpu"
    assert choose_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="FOLDWISE_DEVICE='tpu' is not valid; use auto, cpu, cuda"):
        choose_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            choose_device("cuda")


def test_to_inputs_normalises_with_given_stats(tiny_set):
    x = to_inputs(tiny_set.images, {"mean": [0.5], "std": [0.25]}, torch.device("cpu"))
    expected = (tiny_set.images.float() / 255 - 0.5) / 0.25
    assert torch.allclose(x, expected)
    with pytest.raises(ValueError, match="stats have 3 channels, images have 1"):
        to_inputs(tiny_set.images, {"mean": [0, 0, 0], "std": [1, 1, 1]}, torch.device("cpu"))


def test_fit_learns_and_is_deterministic(tiny_set, tiny_stats, tiny_params):
    train, valid = data(tiny_set, tiny_stats)
    p = dataclasses.replace(tiny_params, epochs=4)
    runs = []
    for _ in range(2):
        seed_everything(1)
        model = build_model((1, 12, 12), 3, p)
        runs.append(fit(model, train, valid, p, seed=1, tags={"fold": 0}))
    a, b = runs
    assert [r["valid_acc"] for r in a.history] == [r["valid_acc"] for r in b.history]
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert a.history[-1]["valid_acc"] > 0.8  # the synthetic classes are easy
    assert a.history[0]["fold"] == 0 and a.history[-1]["epoch"] == 4


def test_fit_keeps_the_best_epochs_weights(tiny_set, tiny_stats, tiny_params):
    train, valid = data(tiny_set, tiny_stats)
    p = dataclasses.replace(tiny_params, epochs=5, lr=0.5, optimizer="sgd", scheduler="none")  # noisy on purpose
    seed_everything(0)
    model = build_model((1, 12, 12), 3, p)
    result = fit(model, train, valid, p, seed=0)
    accs = [r["valid_acc"] for r in result.history]
    assert result.best_epoch == accs.index(max(accs)) + 1
    model.load_state_dict(result.best_state)
    assert evaluate(model, valid)[1] == pytest.approx(max(accs))


def test_weight_decay_and_momentum_reach_the_optimiser(tiny_params):
    model = build_model((1, 12, 12), 3, tiny_params)
    sgd = make_optimizer(model, dataclasses.replace(tiny_params, optimizer="sgd", weight_decay=0.01, momentum=0.5))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["weight_decay"] == 0.01 and sgd.param_groups[0]["momentum"] == 0.5
    adamw = make_optimizer(model, dataclasses.replace(tiny_params, optimizer="adamw", weight_decay=0.02))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.02


@pytest.mark.parametrize("name, when", [("onecycle", "batch"), ("cosine", "batch"), ("step", "epoch"),
                                        ("plateau", "valid_loss"), ("none", "never")])
def test_schedulers(tiny_params, name, when):
    model = build_model((1, 12, 12), 3, tiny_params)
    p = dataclasses.replace(tiny_params, scheduler=name)
    scheduler, step = make_scheduler(make_optimizer(model, p), p, steps_per_epoch=4)
    assert step == when and (scheduler is None) == (name == "none")


def test_step_lr_decays_between_epochs(tiny_set, tiny_stats, tiny_params):
    train, valid = data(tiny_set, tiny_stats)
    p = dataclasses.replace(tiny_params, optimizer="sgd", scheduler="step", step_size=1, gamma=0.5, lr=0.1, epochs=3)
    result = fit(build_model((1, 12, 12), 3, p), train, valid, p, seed=0)
    assert [r["lr"] for r in result.history] == pytest.approx([0.1, 0.05, 0.025])


def test_l1_penalty_changes_the_update(tiny_set, tiny_stats, tiny_params):
    train, valid = data(tiny_set, tiny_stats)
    weights = []
    for l1 in (0.0, 0.01):
        p = dataclasses.replace(tiny_params, model="softmax", l1=l1, epochs=1)
        seed_everything(0)
        model = build_model((1, 12, 12), 3, p)
        fit(model, train, valid, p, seed=0)
        weights.append(l1_penalty(model).item())
    assert weights[1] < weights[0]


def test_a_broken_monitor_never_stops_training(tiny_set, tiny_stats, tiny_params, capsys):
    class Broken(Monitor):
        def _epoch_end(self, row):
            raise ConnectionError("server gone")

    train, valid = data(tiny_set, tiny_stats)
    result = fit(build_model((1, 12, 12), 3, tiny_params), train, valid, tiny_params, seed=0, monitor=Broken())
    assert len(result.history) == tiny_params.epochs
    assert "server gone" in capsys.readouterr().err

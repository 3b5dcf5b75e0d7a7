import dataclasses

import pytest
import torch

from foldwise.training.callbacks import Monitor
from foldwise.training.final import resolve_variant, train_final
from tests.conftest import train_valid


def test_resolve_variant(tiny_params):
    from foldwise.reporting.cvstats import explain_choice, summarize
    from tests.reporting.test_cvstats import folds_table

    summary = summarize(folds_table({"baseline": [0.80, 0.82], "l2": [0.85, 0.87]}))
    assert summary["chosen"] == "l2"
    assert resolve_variant(tiny_params, summary) == ("l2", "crossval", explain_choice(summary))
    pinned = dataclasses.replace(tiny_params, variant="dropout")
    variant, source, reason = resolve_variant(pinned, {"chosen": "l2"})
    assert (variant, source) == ("dropout", "pinned")
    assert reason == "pinned in params.yaml (variant: dropout); crossval's best mean was l2"
    with pytest.raises(ValueError, match=r"^crossval chose variant 'gone', which params.yaml no longer compares "
                                         r"\(compare: baseline, l2, dropout\); re-run crossval \(dvc repro\)$"):
        resolve_variant(tiny_params, {"chosen": "gone"})


class Epochs(Monitor):
    """The epochs a run trained (resumed ones are reported with ``on_resume``, not here)."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_epoch_end(self, row) -> None:
        self.seen.append(row["epoch"])


def test_interrupted_final_training_resumes_to_the_same_model(tmp_path, tiny_set, tiny_stats, tiny_params,
                                                              capsys):
    from foldwise.training.resume import Checkpoints
    from tests.conftest import Interrupted, Killed

    train, valid = train_valid(tiny_set, tiny_stats)
    p = dataclasses.replace(tiny_params, epochs=3)
    whole, whole_result = train_final(train, valid, 3, p, "dropout")
    with pytest.raises(Interrupted):  # killed after the first epoch's checkpoint
        train_final(train, valid, 3, p, "dropout", checkpoints=Killed("train", "k", tmp_path, n=1))
    epochs = Epochs()
    resumed, result = train_final(train, valid, 3, p, "dropout", epochs,
                                  checkpoints=Checkpoints("train", "k", tmp_path))
    # it resumed: epochs 2 and 3 trained (the monitor saw them), from the checkpoint named "final"
    assert epochs.seen == [2, 3] and (tmp_path / "train" / "k" / "final.pt").is_file()
    assert capsys.readouterr().err == "resuming training after epoch 1\n"

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert strip(result.history) == strip(whole_result.history)
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))


def test_padding_too_large_for_the_images_stops_before_training(tiny_set, tiny_stats, tiny_params):
    train, valid = train_valid(tiny_set, tiny_stats)  # 12 x 12 images: 11 pixels at most
    p = dataclasses.replace(tiny_params, augment=True, augment_padding=12)
    with pytest.raises(ValueError, match=r"^augment_padding: 12 is too large for 12x12 images; valid: 0 to 11 pixels$"):
        train_final(train, valid, 3, p, "baseline")

import dataclasses
import json

import numpy as np
import pytest
import torch

from foldwise.training.engine import predict
from foldwise.training.final import evaluate_on, load_checkpoint, resolve_variant, save_checkpoint, train_final
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
    with pytest.raises(ValueError, match="crossval chose variant 'gone'.*re-run crossval"):
        resolve_variant(tiny_params, {"chosen": "gone"})


def test_train_save_load_evaluate(tmp_path, tiny_set, tiny_stats, tiny_params):
    train, valid = train_valid(tiny_set, tiny_stats)
    cpu = torch.device("cpu")
    model, result = train_final(train, valid, 3, tiny_params, "dropout")
    assert len(result.history) == tiny_params.epochs and result.history[0]["variant"] == "dropout"
    save_checkpoint(tmp_path / "m.pt", model, tiny_params, "dropout", tiny_set.classes, tiny_stats, (1, 12, 12))
    loaded, checkpoint = load_checkpoint(tmp_path / "m.pt", cpu)
    assert checkpoint["variant"] == "dropout" and checkpoint["params"]["dropout"] == 0.3
    assert torch.equal(predict(model, valid), predict(loaded, valid))
    metrics, rows = evaluate_on(loaded, checkpoint, valid, tiny_set.classes)
    assert metrics["accuracy"] == pytest.approx(max(r["valid_acc"] for r in result.history))
    assert list(rows.columns) == ["index", "actual", "predicted", "confidence"] and len(rows) == 30
    assert list(rows["index"]) == list(range(30))  # test-image order: row i is image i of the split
    assert list(rows["actual"]) == [tiny_set.classes[i] for i in valid.labels]
    probabilities = torch.softmax(predict(loaded, valid), 1)
    assert np.allclose(rows["confidence"], probabilities.max(1).values.numpy(), atol=1e-4)
    assert list(rows["predicted"]) == [tiny_set.classes[i] for i in probabilities.argmax(1)]
    assert list(metrics["per_class"]) == tiny_set.classes


def test_evaluate_rejects_other_classes(tmp_path, tiny_set, tiny_stats, tiny_params):
    train, valid = train_valid(tiny_set, tiny_stats)
    model, _ = train_final(train, valid, 3, dataclasses.replace(tiny_params, epochs=1), "baseline")
    save_checkpoint(tmp_path / "m.pt", model, tiny_params, "baseline", tiny_set.classes, tiny_stats, (1, 12, 12))
    loaded, checkpoint = load_checkpoint(tmp_path / "m.pt", torch.device("cpu"))
    with pytest.raises(ValueError, match="differ from the model's"):
        evaluate_on(loaded, checkpoint, valid, ["a", "b", "c"])


def test_interrupted_final_training_resumes_to_the_same_model(tmp_path, tiny_set, tiny_stats, tiny_params):
    from foldwise.training.resume import Checkpoints
    from tests.conftest import Interrupted, Killed

    train, valid = train_valid(tiny_set, tiny_stats)
    p = dataclasses.replace(tiny_params, epochs=3)
    whole, whole_result = train_final(train, valid, 3, p, "dropout")
    with pytest.raises(Interrupted):  # killed after the first epoch's checkpoint
        train_final(train, valid, 3, p, "dropout", checkpoints=Killed("train", "k", tmp_path, n=1))
    resumed, result = train_final(train, valid, 3, p, "dropout", checkpoints=Checkpoints("train", "k", tmp_path))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(result.history) == strip(whole_result.history)
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))


def test_a_damaged_or_truncated_model_is_a_one_line_error_naming_file_and_fix(tmp_path, tiny_set, tiny_stats,
                                                                              tiny_params):
    """16 flipped bytes load silently (wrong weights, a wrong test accuracy), and a truncated file
    gave a raw OSError naming no file: the sha256 train records is checked first."""
    from foldwise.core.errors import UserError
    import hashlib

    from foldwise.training.final import model_record, read_record

    train, valid = train_valid(tiny_set, tiny_stats)
    model, _ = train_final(train, valid, 3, dataclasses.replace(tiny_params, epochs=1), "baseline")
    path = tmp_path / "model.pt"
    sha256 = save_checkpoint(path, model, tiny_params, "baseline", tiny_set.classes, tiny_stats, (1, 12, 12))
    assert sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    record = tmp_path / "model.json"
    record.write_text(json.dumps(model_record(path, sha256)))
    assert read_record(record) == sha256
    good = path.read_bytes()
    load_checkpoint(path, torch.device("cpu"), sha256, str(record))

    flipped = bytearray(good)
    weights = max(model.state_dict().values(), key=lambda t: t.numel()).cpu().numpy().tobytes()
    middle = good.index(weights[:64]) + 64  # inside a tensor's bytes: torch alone loads it without a word
    flipped[middle:middle + 16] = bytes(b ^ 0xFF for b in flipped[middle:middle + 16])
    path.write_bytes(bytes(flipped))
    load_checkpoint(path, torch.device("cpu"))  # what happened before: no check, no error
    fix = f"`dvc checkout -f {path}`.*`dvc repro -f train`"
    with pytest.raises(UserError, match=rf"^{path} is damaged: its sha256 is [0-9a-f]{{64}}, but train wrote "
                                        rf"{sha256} \(recorded in {record}\); .*{fix}"):
        load_checkpoint(path, torch.device("cpu"), sha256, str(record))
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match=rf"^{path} is damaged: .*{fix}"):
        load_checkpoint(path, torch.device("cpu"), sha256, str(record))
    with pytest.raises(UserError, match=rf"^{path} is not a readable foldwise model \(.*\); .*{fix}") as error:
        load_checkpoint(path, torch.device("cpu"))  # no sha256 to check: torch's error, named
    assert "\n" not in str(error.value)
    path.unlink()
    with pytest.raises(UserError, match=rf"^{path} is missing; .*{fix}"):
        load_checkpoint(path, torch.device("cpu"), sha256)
    record.write_text('{"path": "models/model.pt"}')
    with pytest.raises(UserError, match="no sha256 of the model in it; train again: `dvc repro -f train`"):
        read_record(record)

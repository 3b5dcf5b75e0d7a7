import dataclasses
import hashlib
import io
import json

import pytest
import torch

from foldwise.core.errors import UserError
from foldwise.training.engine import predict
from foldwise.training.final import train_final
from foldwise.training.model_files import (
    check_classes,
    load_checkpoint,
    load_fold_models,
    model_record,
    read_fold_record,
    read_record,
    save_checkpoint,
    save_fold_models,
)
from foldwise.training.models import build_model
from tests.conftest import train_valid


def test_save_and_load_give_the_same_model(tmp_path, tiny_set, tiny_stats, tiny_params):
    train, valid = train_valid(tiny_set, tiny_stats)
    cpu = torch.device("cpu")
    model, result = train_final(train, valid, 3, tiny_params, "dropout")
    assert len(result.history) == tiny_params.epochs and result.history[0]["variant"] == "dropout"
    save_checkpoint(tmp_path / "m.pt", model, tiny_params, "dropout", tiny_set.classes, tiny_stats, (1, 12, 12))
    loaded, checkpoint = load_checkpoint(tmp_path / "m.pt", cpu)
    assert checkpoint["variant"] == "dropout" and checkpoint["params"]["dropout"] == 0.3
    assert torch.equal(predict(model, valid), predict(loaded, valid))
    assert checkpoint["classes"] == tiny_set.classes and checkpoint["stats"] == tiny_stats


def test_a_model_of_other_classes_is_refused(tmp_path, tiny_set, tiny_stats, tiny_params):
    train, valid = train_valid(tiny_set, tiny_stats)
    model, _ = train_final(train, valid, 3, dataclasses.replace(tiny_params, epochs=1), "baseline")
    save_checkpoint(tmp_path / "m.pt", model, tiny_params, "baseline", tiny_set.classes, tiny_stats, (1, 12, 12))
    loaded, checkpoint = load_checkpoint(tmp_path / "m.pt", torch.device("cpu"))
    check_classes(tiny_set.classes, checkpoint, "m.pt")
    with pytest.raises(UserError, match=r"^m.pt was trained on the classes \[.*\], but the prepared data has "
                                        r"\['a', 'b', 'c'\]; re-run the pipeline: `dvc repro`"):
        check_classes(["a", "b", "c"], checkpoint, "m.pt")


def test_a_damaged_or_truncated_model_is_a_one_line_error_naming_file_and_fix(tmp_path, tiny_set, tiny_stats,
                                                                              tiny_params):
    """16 flipped bytes load silently (wrong weights, a wrong test accuracy), and a truncated file
    gave a raw OSError naming no file: the sha256 train records is checked first."""
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
    fix = f"`dvc checkout -f {path}`.*`dvc repro -f -s train`"
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
    with pytest.raises(UserError, match="no sha256 of the model in it; train again: `dvc repro -f -s train`"):
        read_record(record)


def _final(tmp_path, model, p, classes, stats):
    save_checkpoint(tmp_path / "model.pt", model, p, "l2", classes, stats, (1, 12, 12))
    return load_checkpoint(tmp_path / "model.pt", torch.device("cpu"))[1]


def test_fold_models_are_written_whole_and_loaded_checked(tmp_path, tiny_set, tiny_stats, tiny_params):
    train, valid = train_valid(tiny_set, tiny_stats)
    p = dataclasses.replace(tiny_params, epochs=1, compare=("baseline", "l2"))
    models = [train_final(train, valid, 3, dataclasses.replace(p, seed=s), "l2")[0] for s in (1, 2)]
    folder = tmp_path / "folds"
    save_fold_models(folder, {("l2", 1): models[1].state_dict(), ("l2", 0): models[0].state_dict()}, p,
                     tiny_set.classes, tiny_stats, (1, 12, 12), "fold_models: chosen (l2)")
    record = read_fold_record(folder)
    assert record["note"] == "fold_models: chosen (l2)" and record["fold_models"] == "chosen"
    assert [e["file"] for e in record["variants"]["l2"]] == ["l2/fold0.pt", "l2/fold1.pt"]  # in fold order
    assert sorted(p.name for p in folder.rglob("*")) == ["fold0.pt", "fold1.pt", "folds.json", "l2"]
    final = _final(tmp_path, models[0], p, tiny_set.classes, tiny_stats)
    loaded = load_fold_models(folder, "l2", torch.device("cpu"), final)
    for original, again in zip(models, loaded):
        assert torch.equal(predict(original, valid), predict(again, valid))
    assert load_fold_models(folder, "baseline", torch.device("cpu"), final) == []  # not kept
    fold1 = folder / "l2/fold1.pt"
    fold1.write_bytes(fold1.read_bytes()[:-10])
    with pytest.raises(UserError, match=rf"^{fold1} is damaged: .* but crossval wrote .*recorded in "
                                        rf"{folder / 'folds.json'}.*`dvc repro -f -s crossval`"):
        load_fold_models(folder, "l2", torch.device("cpu"), final)


def test_fold_models_of_other_data_or_no_record_are_refused(tmp_path, tiny_set, tiny_stats, tiny_params):
    train, valid = train_valid(tiny_set, tiny_stats)
    p = dataclasses.replace(tiny_params, epochs=1)
    model, _ = train_final(train, valid, 3, p, "l2")
    folder = tmp_path / "folds"
    save_fold_models(folder, {("l2", 0): model.state_dict()}, p, tiny_set.classes, tiny_stats, (1, 12, 12), "")
    other = {**tiny_stats, "mean": [0.0]}
    final = _final(tmp_path, model, p, tiny_set.classes, other)
    with pytest.raises(UserError, match=r"fold0.pt was trained with other stats than the final model.*`dvc repro`"):
        load_fold_models(folder, "l2", torch.device("cpu"), final)
    (folder / "folds.json").unlink()
    with pytest.raises(UserError, match=r"folds.json: not crossval's record .*`dvc repro -f -s crossval`"):
        load_fold_models(folder, "l2", torch.device("cpu"), final)


def test_a_model_files_bytes_do_not_depend_on_params_its_stage_does_not_track(tmp_path, tiny_set, tiny_stats,
                                                                              tiny_params):
    """crossval and train do not track ensemble, tta, ...: a file holding them would differ between a
    fresh run and DVC's run-cache after `-S ensemble=true`."""
    model = build_model((1, 12, 12), 3, tiny_params)
    other = dataclasses.replace(tiny_params, fold_models="all", ensemble=True, tta=True, variant="l2",
                                train_processes=2, memory_budget_mb=1)
    a = save_checkpoint(tmp_path / "a.pt", model, tiny_params, "l2", tiny_set.classes, tiny_stats, (1, 12, 12))
    b = save_checkpoint(tmp_path / "b.pt", model, other, "l2", tiny_set.classes, tiny_stats, (1, 12, 12))
    assert a == b
    c = save_checkpoint(tmp_path / "c.pt", model, dataclasses.replace(tiny_params, lr=0.5), "l2", tiny_set.classes,
                        tiny_stats, (1, 12, 12))
    assert c != a  # a param that shapes the model's training is recorded


class _RunsCode:
    """Unpickled, it would write a file: a model file that runs code when loaded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_every_model_file_error_says_exactly_how_to_get_a_good_copy_back(tmp_path, monkeypatch, tiny_set,
                                                                         tiny_stats, tiny_params):
    """The messages pinned word for word: the file, who wrote it and where its sha256 is recorded,
    `dvc checkout -f`, the cached copy to delete (by its md5 in dvc.lock when there is one), and the
    stage to re-run."""
    import yaml

    monkeypatch.chdir(tmp_path)
    cpu = torch.device("cpu")
    model = build_model((1, 12, 12), 3, tiny_params)
    path = "models/model.pt"
    (tmp_path / "models").mkdir()
    sha256 = save_checkpoint(path, model, tiny_params, "baseline", tiny_set.classes, tiny_stats, (1, 12, 12))
    assert model_record(path, sha256) == {"path": path, "sha256": sha256, "bytes": (tmp_path / path).stat().st_size}
    wrong = "0" * 64
    restore = (f"restore it from DVC's cache with `dvc checkout -f {path}`; if this error comes back, the cached "
               f"copy is damaged too: delete it ({{cached}}) and train again: `dvc repro -f -s {{stage}}`")
    generic = "the file named by its md5 in dvc.lock under `dvc cache dir`/files/md5/"
    with pytest.raises(UserError) as error:
        load_checkpoint(path, cpu, wrong)
    assert str(error.value) == (f"{path} is damaged: its sha256 is {sha256}, but train wrote {wrong} (recorded "
                                f"in train's model record); " + restore.format(cached=generic, stage="train"))
    md5 = "0123456789abcdef0123456789abcdef"
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "crossval": {"outs": [{"path": path, "md5": md5}]}}}))
    cached = '`rm -f "$(dvc cache dir)/files/md5/01/23456789abcdef0123456789abcdef"`'
    with pytest.raises(UserError) as error:
        load_checkpoint(path, cpu, wrong, "models/folds/folds.json", "crossval")
    assert str(error.value) == (f"{path} is damaged: its sha256 is {sha256}, but crossval wrote {wrong} (recorded "
                                f"in models/folds/folds.json); " + restore.format(cached=cached, stage="crossval"))
    (tmp_path / path).write_bytes(b"")  # torch's EOFError has no message
    with pytest.raises(UserError) as error:
        load_checkpoint(path, cpu, stage="crossval")
    assert str(error.value) == (f"{path} is not a readable foldwise model (EOFError: no detail); "
                                + restore.format(cached=cached, stage="crossval"))
    (tmp_path / path).unlink()
    with pytest.raises(UserError) as error:
        load_checkpoint(path, cpu, stage="crossval")
    assert str(error.value) == f"{path} is missing; " + restore.format(cached=cached, stage="crossval")

    # a file that would run code when unpickled is refused, and the code does not run
    torch.save({"params": _RunsCode(str(tmp_path / "ran"))}, tmp_path / path)
    with pytest.raises(UserError, match=rf"^{path} is not a readable foldwise model \(UnpicklingError: "):
        load_checkpoint(path, cpu)
    assert not (tmp_path / "ran").exists()
    # params that do not parse are named as the file's
    good = torch.load(io.BytesIO(_saved(tmp_path, model, tiny_params, tiny_set, tiny_stats)), weights_only=True)
    torch.save({**good, "params": {**good["params"], "lr": "fast"}}, tmp_path / path)
    from foldwise.core.params import ParamsError

    with pytest.raises(ParamsError, match=rf"^{path} \(params\): lr: expected a number"):
        load_checkpoint(path, cpu)
    record = tmp_path / "model.json"
    record.write_text("not json")
    with pytest.raises(UserError, match=r"^.*model\.json: not a model record \(.+\); train again: "
                                        r"`dvc repro -f -s train`$"):
        read_record(record)


def _saved(tmp_path, model, p, tiny_set, tiny_stats) -> bytes:
    save_checkpoint(tmp_path / "saved.pt", model, p, "baseline", tiny_set.classes, tiny_stats, (1, 12, 12))
    return (tmp_path / "saved.pt").read_bytes()


def test_a_model_file_never_needs_the_imagenet_file_its_training_started_from(tmp_path, tiny_set, tiny_stats,
                                                                              tiny_params):
    """The saved weights replace everything: a resnet18 trained from ImageNet weights loads where the
    ImageNet file is gone."""
    p = dataclasses.replace(tiny_params, model="resnet18")
    model = build_model((1, 12, 12), 3, p)
    started_from = dataclasses.replace(p, pretrained=True, pretrained_path=str(tmp_path / "gone.pth"))
    save_checkpoint(tmp_path / "m.pt", model, started_from, "baseline", tiny_set.classes, tiny_stats, (1, 12, 12))
    loaded, checkpoint = load_checkpoint(tmp_path / "m.pt", torch.device("cpu"))
    assert checkpoint["params"]["pretrained"] is True  # the file says how it was trained
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_the_fold_record_keeps_compares_order_and_exact_entries(tmp_path, tiny_stats, tiny_params):
    """folds.json lists the variants in ``compare``'s order (not the alphabet's), each fold as exactly
    {fold, file, sha256}, indented for a reader of the file."""
    p = dataclasses.replace(tiny_params, compare=("l2", "baseline"), fold_models="all")
    state = build_model((1, 12, 12), 3, p).state_dict()
    weights = {("baseline", 1): state, ("l2", 1): state, ("baseline", 0): state, ("l2", 0): state}
    save_fold_models(tmp_path / "folds", weights, p, ["a", "b", "c"], tiny_stats, (1, 12, 12), "kept: all")
    text = (tmp_path / "folds" / "folds.json").read_text()
    record = json.loads(text)
    assert text == json.dumps(record, indent=2) + "\n"
    assert list(record["variants"]) == ["l2", "baseline"]
    for variant, entries in record["variants"].items():
        assert [sorted(e) for e in entries] == [["file", "fold", "sha256"]] * 2
        assert [(e["fold"], e["file"]) for e in entries] == [(k, f"{variant}/fold{k}.pt") for k in (0, 1)]
        for e in entries:
            assert e["sha256"] == hashlib.sha256((tmp_path / "folds" / e["file"]).read_bytes()).hexdigest()


def test_a_file_torch_cannot_read_is_named_with_torchs_own_first_line(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a model file at all")
    with pytest.raises(UserError) as error:
        load_checkpoint(path, torch.device("cpu"))
    message = str(error.value)
    assert message.startswith(f"{path} is not a readable foldwise model (UnpicklingError: Weights only load failed.")
    assert "\n" not in message and "no detail" not in message

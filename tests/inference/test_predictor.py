"""The predictor evaluate writes: what it holds, that it predicts as evaluate does, and that a missing
or damaged one is refused with the fix."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

from foldwise.core.errors import UserError
from foldwise.data.batches import Preloaded
from foldwise.data.images import BACKGROUND
from foldwise.data.normalize import to_inputs
from foldwise.inference.predictor import (
    CARD,
    FILE,
    FORMAT,
    RECORD,
    cause,
    input_size,
    load_predictor,
    save_predictor,
)
from foldwise.reporting.calibration import scale
from foldwise.training.ensemble import assess, log_probabilities
from foldwise.training.final import train_final
from tests.conftest import CLASSES, make_images
from tests.inference.conftest import STATS, final_checkpoint, make_members
from tests.training.test_model_files import _RunsCode


def test_the_folder_holds_the_file_its_sha256_and_the_card(predictor_dir):
    text = (predictor_dir / RECORD).read_text()
    record = json.loads(text)
    assert text == json.dumps(record, indent=2) + "\n"  # readable in a diff, one key a line
    data = (predictor_dir / FILE).read_bytes()
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert (record["format"], record["file"], record["bytes"]) == (FORMAT, FILE, len(data))
    assert record["used"] == "ensemble+tta" and record["members"] == 2 and record["test_time_flips"] is True
    assert record["temperature"] == 0.8 and record["classes"] == CLASSES
    assert record["input"] == {"channels": 1, "height": 12, "width": 12, "size": 12,
                               "resize": "shorter side to 12, then centre crop 12x12", "colour": "greyscale (L)",
                               "transparency": f"composited onto RGB {list(BACKGROUND)}",
                               "mean": STATS["mean"], "std": STATS["std"]}
    assert (predictor_dir / CARD).read_text() == "# Model card\nensemble+tta\n"


def test_log_probs_are_evaluates_arithmetic(predictor, small_params):
    hwc = make_images(20)[0]
    images = torch.from_numpy(np.stack([im.transpose(2, 0, 1) for im in hwc]))  # N x C x H x W, standard strides
    members = make_members(small_params)
    expected = scale(log_probabilities(members, Preloaded(to_inputs(images, STATS, torch.device("cpu"))), True), 0.8)
    assert torch.equal(predictor.log_probs(images), expected)
    plain = scale(log_probabilities(members, Preloaded(to_inputs(images, STATS, torch.device("cpu")))), 0.8)
    assert not torch.equal(predictor.log_probs(images), plain)  # the flips are in
    # one channel permuted from H x W x C counts as contiguous with other strides, on which convolutions
    # may round differently: the predictor takes it as evaluate's standard layout
    odd = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous()
    assert odd.stride() != images.stride() and torch.equal(odd, images)
    assert torch.equal(predictor.log_probs(odd), expected)
    with pytest.raises(ValueError, match=r"images are \(3, 12, 12\), the predictor takes \(1, 12, 12\)"):
        predictor.log_probs(images.repeat(1, 3, 1, 1))


def test_the_saved_predictor_is_the_one_assess_chose_and_scores(tmp_path, tiny_params):
    images, labels = make_images(150)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels)
    data = Preloaded(to_inputs(x, STATS, torch.device("cpu")), y)
    train, valid, test = data.subset(np.arange(90)), data.subset(np.arange(90, 120)), data.subset(np.arange(120, 150))
    p = dataclasses.replace(tiny_params, conv_channels=[4, 8])
    folds = [train_final(train.subset(np.arange(k, 90, 2)), valid, 3, p, "baseline")[0].eval() for k in (0, 1)]
    single = train_final(train, valid, 3, p, "baseline")[0].eval()
    result = assess(single, folds, test, valid, CLASSES, True, True, True)
    assert result.used == "ensemble+tta" and result.members == folds and result.flip
    save_predictor(tmp_path / "p", result.members, result.flip, result.temperature, result.used, final_checkpoint(p))
    got = load_predictor(tmp_path / "p").log_probs(x[120:])
    assert [CLASSES[i] for i in got.argmax(1)] == list(result.predictions["predicted"])
    assert np.array_equal(got.max(1).values.exp().numpy().round(6), result.predictions["calibrated_confidence"])


def test_input_size_follows_prepare_or_the_models_shape():
    assert input_size(0, (1, 28, 28)) == 28  # kept size: shorter side, then centre crop, as prepare would
    assert input_size(0, (3, 20, 30)) == (20, 30)
    assert input_size(64, (3, 64, 64)) == 64
    assert input_size([10, 12], (3, 10, 12)) == (10, 12)


def test_a_damaged_missing_or_foreign_predictor_is_one_line_naming_the_file_and_the_fix(predictor_dir, tmp_path):
    def refused(folder) -> str:
        with pytest.raises(UserError) as info:
            load_predictor(folder)
        assert "\n" not in str(info.value) and "dvc repro evaluate" in str(info.value)
        return str(info.value)

    assert "no predictor there" in refused(tmp_path / "nowhere")
    data = bytearray((predictor_dir / FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (predictor_dir / FILE).write_bytes(bytes(data))
    message = refused(predictor_dir)
    assert f"{predictor_dir / FILE} is damaged" in message and "dvc checkout" in message
    (predictor_dir / RECORD).write_text("{not json")
    assert f"{predictor_dir / RECORD}: not a foldwise predictor record" in refused(predictor_dir)
    (predictor_dir / FILE).unlink()
    (predictor_dir / RECORD).write_text(json.dumps({"sha256": "0" * 64}))
    assert f"{predictor_dir / FILE}: cannot be read" in refused(predictor_dir)
    foreign = torch.nn.Linear(2, 2).state_dict()
    torch.save(foreign, predictor_dir / FILE)
    sha = hashlib.sha256((predictor_dir / FILE).read_bytes()).hexdigest()
    (predictor_dir / RECORD).write_text(json.dumps({"sha256": sha}))
    assert "is not a usable foldwise predictor" in refused(predictor_dir)
    # a file that would run code when unpickled, with a matching record: refused, and the code never runs
    torch.save({"format": FORMAT, "params": _RunsCode(str(tmp_path / "ran"))}, predictor_dir / FILE)
    sha = hashlib.sha256((predictor_dir / FILE).read_bytes()).hexdigest()
    (predictor_dir / RECORD).write_text(json.dumps({"sha256": sha}))
    assert "is not a usable foldwise predictor (UnpicklingError: " in refused(predictor_dir)
    assert not (tmp_path / "ran").exists()


def test_an_rgb_predictor_resized_to_a_fixed_shape_says_so(tmp_path, small_params):
    """The other branches of the record's input description: three channels, and an [h, w] image_size
    (prepare stretched every image to exactly that)."""
    p = dataclasses.replace(small_params, channels=3, image_size=[12, 10])
    shape = (3, 12, 10)
    final = {**final_checkpoint(p, shape), "stats": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}}
    save_predictor(tmp_path / "rgb", make_members(p, 1, shape), False, 1.0, "single", final,
                   card=lambda summary: "card\n")
    described = json.loads((tmp_path / "rgb" / RECORD).read_text())["input"]
    assert (described["channels"], described["height"], described["width"], described["size"]) == (3, 12, 10, [12, 10])
    assert described["colour"] == "RGB" and described["resize"] == "stretched to exactly 12x10"
    # a square [h, w] is still stretched (prepare did so), not cut from the shorter side
    square = dataclasses.replace(p, image_size=[12, 12])
    final = {**final_checkpoint(square, (3, 12, 12)), "stats": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}}
    save_predictor(tmp_path / "sq", make_members(square, 1, (3, 12, 12)), False, 1.0, "single", final)
    loaded = load_predictor(tmp_path / "sq")
    assert loaded.size == (12, 12) and loaded.summary()["input"]["resize"] == "stretched to exactly 12x12"
    assert described["mean"] == [0.1, 0.2, 0.3] and described["std"] == [0.4, 0.5, 0.6]


def _plant(folder, payload) -> None:
    """``payload`` saved as the predictor file, with a record whose sha256 matches it."""
    if isinstance(payload, bytes):
        (folder / FILE).write_bytes(payload)
    else:
        torch.save(payload, folder / FILE)
    (folder / RECORD).write_text(json.dumps({"sha256": hashlib.sha256((folder / FILE).read_bytes()).hexdigest()}))


def test_each_refusal_names_the_cause_and_this_folders_fix_in_its_words(predictor_dir, tmp_path):
    """The messages word for word: the folder in the fix, the error's type and only its first line."""
    fix = (f"restore it with `dvc checkout {predictor_dir}` (or `dvc pull {predictor_dir}`), or write it again: "
           "`dvc repro evaluate`")
    path, record = predictor_dir / FILE, predictor_dir / RECORD

    def refused(folder=predictor_dir) -> str:
        with pytest.raises(UserError) as info:
            load_predictor(folder)
        return str(info.value)

    good = path.read_bytes()
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    recorded = json.loads(record.read_text())["sha256"]
    assert refused() == f"{path} is damaged: its sha256 is {actual}, but {record} records {recorded}; {fix}"
    path.write_bytes(good)
    nowhere = tmp_path / "nowhere"
    assert refused(nowhere) == (f"{nowhere}: no predictor there (not a folder); restore it with "
                                f"`dvc checkout {nowhere}` (or `dvc pull {nowhere}`), or write it again: "
                                "`dvc repro evaluate`")
    saved = torch.load(path, weights_only=True)
    _plant(predictor_dir, {**saved, "format": "foldwise-predictor/9"})
    assert refused() == (f"{path} is not a usable foldwise predictor (ValueError: format 'foldwise-predictor/9', "
                         f"this foldwise reads '{FORMAT}'); {fix}")
    _plant(predictor_dir, b"")  # torch's EOFError has no message
    assert refused() == f"{path} is not a usable foldwise predictor (EOFError: no detail); {fix}"
    _plant(predictor_dir, {**saved, "members": [torch.nn.Linear(2, 2).state_dict()]})  # a many-line error
    assert refused() == (f"{path} is not a usable foldwise predictor (RuntimeError: Error(s) in loading "
                         f"state_dict for Sequential:); {fix}")
    _plant(predictor_dir, {**saved, "params": {**saved["params"], "colour": 3}})
    assert refused().startswith(f"{path} is not a usable foldwise predictor (ParamsError: predictor params: "
                                "unknown key 'colour'")
    record.write_text("[]")
    assert refused() == (f"{record}: not a foldwise predictor record (TypeError: list indices must be integers or "
                         f"slices, not str); {fix}")
    record.write_text(json.dumps({"sha256": "0" * 64}))
    path.unlink()
    assert refused() == f"{path}: cannot be read (No such file or directory); {fix}"


def test_a_predictor_of_imagenet_weights_loads_without_the_imagenet_file(tmp_path):
    """Trained from ImageNet weights (pretrained: true, pretrained_path where the file was): the saved
    weights replace them, so loading needs neither the file nor torchvision's cache."""
    from foldwise.core.params import Params

    p = dataclasses.replace(Params(), model="resnet18", pretrained=True, pretrained_path=str(tmp_path / "gone.pth"),
                            image_size=32, channels=3)
    shape = (3, 32, 32)
    plain = dataclasses.replace(p, pretrained=False, pretrained_path="")
    final = {**final_checkpoint(p, shape), "stats": {"mean": [0.5] * 3, "std": [0.2] * 3}}
    assert final["params"]["pretrained"] is True and final["params"]["pretrained_path"].endswith("gone.pth")
    save_predictor(tmp_path / "p", make_members(plain, 1, shape), False, 1.0, "single", final)
    loaded = load_predictor(tmp_path / "p")
    assert loaded.params["pretrained"] is True and len(loaded.members) == 1


def test_a_cause_is_the_type_and_the_first_line_without_colour_codes():
    assert cause(ValueError("bad value\nsecond line")) == "ValueError: bad value"
    assert cause(RuntimeError("\n  indented first line  \nmore")) == "RuntimeError: indented first line"
    assert cause(KeyError("sha256")) == "KeyError: 'sha256'"
    assert cause(EOFError()) == "EOFError: no detail" and cause(OSError("   ")) == "OSError: no detail"
    assert cause(RuntimeError("Failed. \x1b[96mThis is step 1/3\x1b[0m of it")) == (
        "RuntimeError: Failed. This is step 1/3 of it")

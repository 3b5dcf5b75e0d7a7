from pathlib import Path

import pytest
import yaml

from foldwise.core.params import FIELDS, UNTRACKED, Params, ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_project_params_yaml_is_valid_and_sets_every_key():
    params = load_params(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(raw) == set(FIELDS), "params.yaml should document every key"
    assert {"baseline", "l2", "dropout"} <= set(params.variants)
    assert isinstance(params.lr, float)


def test_the_dataclass_defaults_are_the_values_params_yaml_ships():
    """Defaults live in Params; params.yaml writes them out. variants and compare are the project's list of
    experiments (the dataclass has baseline alone), not a key's default."""
    import dataclasses

    shipped, default = load_params(ROOT / "params.yaml"), Params()
    differ = {f.name: (getattr(default, f.name), getattr(shipped, f.name)) for f in dataclasses.fields(Params)
              if getattr(default, f.name) != getattr(shipped, f.name)}
    assert set(differ) <= {"variants", "compare"}, f"Params default vs params.yaml: {differ}"
    assert shipped.variants["baseline"] == default.variants["baseline"] == {}


def test_every_key_is_tracked_by_some_dvc_stage():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    tracked = {key for stage in stages.values() for key in stage.get("params", []) if isinstance(key, str)}
    assert set(FIELDS) - tracked == UNTRACKED, "a key no stage tracks would not re-run anything when changed"
    assert not UNTRACKED & tracked
    # only the report (it lists every changed key, in a second) depends on the whole file
    whole_file = {name for name, stage in stages.items()
                  for key in stage.get("params", []) if key == {"params.yaml": None}}
    assert whole_file == {"report"}


def test_every_variant_key_is_tracked_by_every_stage_that_trains_with_it():
    """A variant key changes how crossval trains its runs and how train trains the final model (and,
    through them, what evaluate loads): a key forgotten in one stage's list would let DVC keep that
    stage's stale results. Adding a variant key means adding it to both lists in dvc.yaml."""
    from foldwise.core.params import VARIANT_KEYS

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in ("crossval", "train"):
        tracked = {key for key in stages[stage].get("params", []) if isinstance(key, str)}
        missing = [key for key in VARIANT_KEYS if key not in tracked]
        assert missing == [], f"dvc.yaml stage {stage} does not track {missing}"


def test_scientific_notation_is_a_float_as_dvc_reads_it(tmp_path):
    params = load_params(write(tmp_path, "lr: 1e-4\nweight_decay: 5E-4\n"))
    assert params.lr == pytest.approx(1e-4)
    assert params.weight_decay == pytest.approx(5e-4)


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    with pytest.raises(ParamsError, match=r"unknown key 'learning_rate'.*valid keys: .*\blr\b"):
        load_params(write(tmp_path, "learning_rate: 0.1\n"))
    with pytest.raises(ParamsError, match=r"'epoch'.*did you mean 'epochs'"):
        load_params(write(tmp_path, "epoch: 3\n"))


@pytest.mark.parametrize("text, message", [
    ("lr: fast\n", r"lr: expected a number, got 'fast'"),
    ("lr: .nan\n", r"lr: expected a number, got nan"),
    ("epochs: 2.5\n", r"epochs: expected an integer"),
    ("batchnorm: 1\n", r"batchnorm: expected true or false"),
    ("optimizer: rmsprop\n", r"optimizer: 'rmsprop' is not one of sgd, adam, adamw"),
    ("precision: fp16\n", r"precision: 'fp16' is not one of fp32, bf16"),
    ("dropout: 1.5\n", r"dropout: 1.5 is invalid; expected a probability"),
    ("valid_size: 1.5\n", r"valid_size: .*fraction in \(0, 1\)"),
    ("k_folds: 1\n", r"k_folds: .*at least 2 folds"),
    ("hidden_sizes: [10, -1]\n", r"hidden_sizes: expected a list of positive integers"),
    ("conv_channels: [6, 16, 32]\n", r"conv_channels: expected a list of 2 positive integers"),
    ("variants: {fancy: {dataset: mnist}}\n", r"variants.fancy.dataset: a variant cannot set this key"),
    ("variants: {heavy: {weight_decay: x}}\n", r"variants.heavy.weight_decay: expected a number"),
    ("variants: {big: {dropout: 0.9999, lr: -1}}\n", r"variants.big: lr: -1 is invalid"),
    ("variant: l3\n", r"variant: 'l3' is not defined; valid: auto, baseline"),
    ("lr: -0.1\n", r"lr: -0.1 is invalid; expected a positive value \(valid: > 0\)"),
    ("k_folds: 1\n", r"k_folds: 1 is invalid; .*\(valid: 2 to the smallest class's size\)"),
    ("epochs: '10'\n", r"epochs: expected an integer, got '10'"),
    ("variants: {baseline: {}, l2: {weight_dacay: 0.1}}\n",
     r"variants.l2.weight_dacay: a variant cannot set this key \(did you mean 'weight_decay'\?\)"),
    ("compare: [baseline, l9]\n", r"compare: 'l9' is not defined; valid: baseline \(or several joined by '\+'"),
    ("compare: baseline\n", r"compare: expected a list of variant names"),
    ("compare: [baseline, baseline]\n", r"compare: a variant is listed twice"),
    ("variants: {baseline: {}, a: {lr: 0.1}, b: {lr: 0.2}}\ncompare: [a+b]\n",
     r"variant 'a\+b': its parts set lr to 0.1 and 0.2"),
    ("warmup_epochs: 5\n", r"warmup_epochs: 5 is invalid; .*\(valid: 0 to 4\)"),
    ("augment_flip: sometimes\n", r"augment_flip: expected true, false, auto or alternate, got 'sometimes'"),
    ("ensemble: alternate\n", r"ensemble: expected true, false or auto, got 'alternate'"),
    ("label_smoothing: 1.0\n", r"label_smoothing: 1.0 is invalid; .* in \[0, 1\)"),
    ("label_smoothing: -0.1\n", r"label_smoothing: -0.1 is invalid"),
    ("bn_lr_factor: 0\n", r"bn_lr_factor: 0 is invalid; expected a positive factor of lr \(valid: > 0"),
    ("width: 0\n", r"width: 0 is invalid; expected a multiplier in \(0, 8\]"),
    ("pretrained_path: w.pth\n", r"pretrained_path: 'w.pth' is invalid; is only read with pretrained: true"),
    ("- just\n- a list\n", r"expected a mapping"),
])
def test_bad_values_are_named(tmp_path, text, message):
    with pytest.raises(ParamsError, match=message):
        load_params(write(tmp_path, text))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(write(tmp_path, "lr: [1\n"))


def test_variant_overrides_apply_only_their_keys():
    params = parse_params({"variants": {"baseline": {}, "l2": {"weight_decay": 0.01}}})
    l2 = params.for_variant("l2")
    assert l2.weight_decay == 0.01 and l2.lr == params.lr
    assert params.for_variant("baseline") == params
    with pytest.raises(ParamsError, match="valid names: baseline, l2"):
        params.for_variant("dropout")


def test_variants_combine_with_plus():
    params = parse_params({"variants": {"baseline": {}, "l2": {"weight_decay": 0.01}, "dropout": {"dropout": 0.2}},
                           "compare": ["baseline", "l2+dropout"], "variant": "dropout+l2"})
    both = params.for_variant("l2+dropout")
    assert (both.weight_decay, both.dropout) == (0.01, 0.2)
    assert params.compared == ["baseline", "l2+dropout"]
    assert parse_params({"variants": {"baseline": {}, "x": {}}}).compared == ["baseline", "x"]  # [] = all


def test_to_dict_round_trips_through_validation():
    params = Params()
    assert parse_params(params.to_dict()) == params

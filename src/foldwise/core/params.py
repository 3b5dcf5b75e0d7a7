"""Typed, validated view of params.yaml.

Every key the pipeline reads is declared once in ``FIELDS`` with its type and
allowed values. Reading a file with an unknown key, a wrong type or a value
outside the allowed set fails with a message that names the key and says what
would be valid, before any stage does work.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def compile_pattern(pattern: str, key: str = "label_pattern") -> re.Pattern[str]:
    """A regex with a group that captures the class; errors name ``key`` and give an example."""
    example = r"e.g. '^(cat|dog)\.' for cat.12.jpg, or '^(?P<label>[a-z]+)_\d+' for beach_3.png"
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{key}: {pattern!r} is not a valid regular expression ({exc}); {example}") from None
    if regex.groups < 1:
        raise ValueError(f"{key}: {pattern!r} needs a group that captures the class name; {example}")
    return regex


class ParamsError(ValueError):
    """A params.yaml key is unknown, missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class Params:
    """All hyperparameters of one run: each key's type, default and valid range or unit. What a key means
    is written once, in params.yaml's comments (tests/core/test_params.py keeps the defaults equal)."""

    # data
    dataset: str = "fashion-mnist"
    valid_size: float = 0.16667  # float in (0, 1): a fraction; int >= 1: images
    test_size: float = 0.2  # float in (0, 1): a fraction; int >= 1: images
    max_images_per_split: int = 0  # >= 0 images (0: all)
    seed: int = 42
    data_path: str = "data/own"  # a path
    label_pattern: str = ""  # a regex with one group, or ""
    image_size: int | tuple[int, int] = 0  # pixels: 0, N >= 1, or [h, w]
    channels: int = 0  # 0, 1 or 3
    memory_budget_mb: int = 4096  # MiB
    # model
    model: str = "lenet"  # a name in models.MODELS or a torchvision classification model
    pretrained: bool = False
    pretrained_path: str = ""  # a path, or ""
    width: float = 1.0  # a factor in (0, 8]
    hidden_sizes: tuple[int, ...] = (512, 256, 128, 64)  # units per hidden layer
    conv_channels: tuple[int, ...] = (8, 32)  # two channel counts
    batchnorm: bool = True
    dropout: float = 0.0  # a probability in [0, 1)
    init: str = "kaiming"
    # augmentation of training batches only
    augment: bool = False
    augment_padding: int = 2  # pixels, >= 0
    augment_flip: bool | str = "auto"  # true, false, auto or alternate
    # optimisation
    optimizer: str = "adam"
    lr: float = 0.008  # > 0
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    l1: float = 0.0  # >= 0
    label_smoothing: float = 0.0  # a share of the target in [0, 1)
    bn_lr_factor: float = 1.0  # a factor > 0 of lr
    ema: float = 0.0  # a decay per step in [0, 1) (0: off)
    scheduler: str = "onecycle"
    step_size: int = 30  # epochs, >= 1
    gamma: float = 0.1  # a factor in (0, 1]
    plateau_patience: int = 2  # epochs, >= 0
    warmup_epochs: int = 0  # epochs, >= 0
    patience: int = 0  # epochs, >= 0 (0: off)
    batch_size: int = 256
    epochs: int = 5
    # cross-validation and final model
    k_folds: int = 5
    variants: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: {"baseline": {}}
    )
    compare: tuple[str, ...] = ()  # variant names or "a+b"; (): all
    variant: str = "auto"
    train_processes: int = 1  # processes, >= 1
    threads: int = 1  # torch threads per training run (CPU), >= 1
    precision: str = "fp32"  # CPU training's arithmetic: fp32 or bf16 (autocast)
    # the fold ensemble, test-time augmentation, calibration
    fold_models: str = "chosen"  # chosen, all or none
    ensemble: bool | str = "auto"  # true, false or auto
    tta: bool = False
    def overrides(self, name: str) -> dict[str, Any]:
        """The overrides of variant ``name``; ``a+b`` merges a's and b's (they must not disagree)."""
        if name in self.variants:
            return dict(self.variants[name])
        parts = name.split("+")
        if len(parts) > 1 and all(parts):
            merged: dict[str, Any] = {}
            for part in parts:
                for key, value in self.overrides(part).items():
                    if key in merged and merged[key] != value:
                        raise ParamsError(f"variant {name!r}: its parts set {key} to {merged[key]!r} "
                                          f"and {value!r}; combine variants that change different keys")
                    merged[key] = value
            return merged
        raise ParamsError(
            f"variant {name!r} is not defined; valid names: {', '.join(self.variants)}, "
            f"or several joined by '+' (section 'variants' of params.yaml)"
        )

    def for_variant(self, name: str) -> Params:
        """These params with the named variant's overrides applied."""
        return dataclasses.replace(self, **self.overrides(name))

    @property
    def compared(self) -> list[str]:
        """The variants crossval runs, in order."""
        return list(self.compare) or list(self.variants)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy for JSON provenance records."""
        out = dataclasses.asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        out["conv_channels"] = list(self.conv_channels)
        out["compare"] = list(self.compare)
        out["image_size"] = self.image_size if isinstance(self.image_size, int) else list(self.image_size)
        out["variants"] = {k: dict(v) for k, v in self.variants.items()}
        return out


CHOICES: dict[str, tuple[str, ...]] = {
    "init": ("kaiming", "normal", "default"),
    "optimizer": ("sgd", "adam", "adamw"),
    "scheduler": ("none", "step", "plateau", "cosine", "onecycle"),
    "fold_models": ("chosen", "all", "none"),
    "precision": ("fp32", "bf16"),
}
WORDS = {"augment_flip": ("auto", "alternate")}  # true | false | one of these; other such keys: auto
LENGTHS = {"conv_channels": 2}  # list-valued keys with a fixed length
# Keys a variant may override: everything that shapes one training run, not
# the data or the CV protocol (a variant that changed the folds would not be
# comparable with the others).
VARIANT_KEYS = (
    "model", "pretrained", "pretrained_path", "width", "hidden_sizes", "conv_channels", "batchnorm",
    "dropout", "init", "augment", "augment_padding", "augment_flip", "optimizer", "lr",
    "momentum", "nesterov", "weight_decay", "l1", "label_smoothing", "bn_lr_factor", "ema", "scheduler", "step_size",
    "gamma", "plateau_patience", "warmup_epochs", "patience", "batch_size", "epochs",
    "precision",
)
FIELDS = {f.name: f for f in dataclasses.fields(Params)}
# Keys no DVC stage tracks: they change speed and memory, never results, so
# changing them must not re-run (and invalidate) anything.
UNTRACKED = {"memory_budget_mb"}

# YAML 1.1 (PyYAML) reads 1e-4 as a string; DVC (YAML 1.2) reads it as a
# float. Resolve floats the YAML 1.2 way so both agree.
_FLOAT = re.compile(
    r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check(key: str, value: Any, where: str) -> Any:
    """Return ``value`` as the declared type of ``key`` or raise naming it."""
    kind = FIELDS[key].type  # a string: annotations are postponed
    if kind == "tuple[int, ...]":
        ok = isinstance(value, (list, tuple)) and value and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        )
        if not ok or (key in LENGTHS and len(value) != LENGTHS[key]):
            size = f"{LENGTHS[key]} " if key in LENGTHS else ""
            raise ParamsError(f"{where}{key}: expected a list of {size}positive integers, got {value!r}")
        return tuple(value)
    if kind == "tuple[str, ...]":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise ParamsError(f"{where}{key}: expected a list of variant names, got {value!r}")
        return tuple(value)
    if kind == "bool | str":
        words = WORDS.get(key, ("auto",))
        if value not in (True, False, *words):
            options = ["true", "false", *words]
            raise ParamsError(f"{where}{key}: expected {', '.join(options[:-1])} or {options[-1]}, got {value!r}")
        return value
    if kind == "int | tuple[int, int]":
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        ):
            return tuple(value)
        raise ParamsError(f"{where}{key}: expected 0 (keep), a size N (shorter side, then centre crop) "
                          f"or [height, width], got {value!r}")
    if kind == "bool":
        if not isinstance(value, bool):
            raise ParamsError(f"{where}{key}: expected true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where}{key}: expected an integer, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ParamsError(f"{where}{key}: expected a number, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ParamsError(f"{where}{key}: expected a string, got {value!r}")
        if key in CHOICES and value not in CHOICES[key]:
            raise ParamsError(f"{where}{key}: {value!r} is not one of {', '.join(CHOICES[key])}")
        return value
    raise ParamsError(f"{where}{key}: unsupported value {value!r}")


def _check_ranges(p: Params, where: str = "") -> None:
    def bad(key: str, rule: str) -> ParamsError:
        return ParamsError(f"{where}{key}: {getattr(p, key)!r} is invalid; {rule}")

    if not (0 <= p.dropout < 1):
        raise bad("dropout", "expected a probability in [0, 1)")
    if not (0 <= p.label_smoothing < 1):
        raise bad("label_smoothing", "expected the target's share spread over all classes, in [0, 1)")
    if not (0 <= p.ema < 1):
        raise bad("ema", "expected the average's decay per step, in [0, 1) (0 = off; 0.99 averages ~100 steps)")
    if p.bn_lr_factor <= 0:
        raise bad("bn_lr_factor", "expected a positive factor of lr (valid: > 0; 1 = the same lr)")
    for key in ("lr", "batch_size", "epochs", "step_size"):
        if getattr(p, key) <= 0:
            raise bad(key, "expected a positive value (valid: > 0)")
    for key in ("weight_decay", "l1", "momentum", "max_images_per_split", "plateau_patience",
                "patience", "augment_padding", "warmup_epochs"):
        if getattr(p, key) < 0:
            raise bad(key, "expected zero or a positive value (valid: >= 0)")
    if not (0 < p.gamma <= 1):
        raise bad("gamma", "expected a factor in (0, 1]")
    if not (0 < p.width <= 8):
        raise bad("width", "expected a multiplier in (0, 8]; 0.5 halves every hidden width")
    if p.warmup_epochs >= p.epochs:
        raise bad("warmup_epochs", f"expected fewer warm-up epochs than epochs (valid: 0 to {p.epochs - 1})")
    if p.pretrained_path and not p.pretrained:
        raise bad("pretrained_path", "is only read with pretrained: true")
    for key in ("valid_size", "test_size"):
        size = getattr(p, key)
        if isinstance(size, float) and not (0 < size < 1):
            raise bad(key, "a float must be a fraction in (0, 1); use an integer for a count")
        if isinstance(size, int) and size < 1:
            raise bad(key, "an integer must be a count of images >= 1")
    if p.threads < 1:
        raise bad("threads", "expected torch threads per training run, >= 1 (1 = a core each: runs go side by side)")
    if p.train_processes < 1:
        raise bad("train_processes", "expected 1 (one process) or more (DDP under torchrun)")
    if p.k_folds < 2:
        raise bad("k_folds", "cross-validation needs at least 2 folds (valid: 2 to the smallest class's size)")
    if p.channels not in (0, 1, 3):
        raise bad("channels", "expected 0 (the dataset's own), 1 (grey) or 3 (RGB)")
    if p.memory_budget_mb < 1:
        raise bad("memory_budget_mb", "expected a positive number of megabytes")
    if not p.data_path.strip():
        raise bad("data_path", "expected a path; the default is data/own")
    if p.label_pattern:
        try:
            compile_pattern(p.label_pattern)
        except ValueError as exc:
            raise ParamsError(f"{where}{exc}") from None


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a mapping read from params.yaml and return typed ``Params``."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of keys to values, got {type(raw).__name__}")
    valid = list(FIELDS)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in FIELDS:
            raise ParamsError(
                f"{source}: unknown key {key!r}{_suggest(str(key), valid)}; "
                f"valid keys: {', '.join(valid)}"
            )
        if key != "variants":
            values[key] = _check(key, value, f"{source}: ")
    variants = raw.get("variants", {"baseline": {}})
    if not isinstance(variants, dict) or not variants:
        raise ParamsError(f"{source}: variants: expected a non-empty mapping of name -> overrides")
    checked: dict[str, dict[str, Any]] = {}
    for name, overrides in variants.items():
        where = f"{source}: variants.{name}."
        if overrides is None:
            overrides = {}
        if not isinstance(overrides, dict):
            raise ParamsError(f"{where[:-1]}: expected a mapping of overrides, got {overrides!r}")
        for key in overrides:
            if key not in VARIANT_KEYS:
                raise ParamsError(
                    f"{where}{key}: a variant cannot set this key{_suggest(str(key), list(VARIANT_KEYS))}; "
                    f"valid keys: {', '.join(VARIANT_KEYS)}"
                )
        checked[str(name)] = {k: _check(k, v, where) for k, v in overrides.items()}
    values["variants"] = checked
    params = Params(**values)
    _check_ranges(params, f"{source}: ")
    pinned = [params.variant] if params.variant != "auto" else []
    for name in dict.fromkeys([*checked, *params.compare, *pinned]):
        try:
            resolved = params.for_variant(name)
        except ParamsError as exc:
            if name in checked or "+" in name and all(part in checked for part in name.split("+")):
                raise ParamsError(f"{source}: {exc}") from None
            key = "compare" if name in params.compare else "variant"
            raise ParamsError(
                f"{source}: {key}: {name!r} is not defined; valid: {'auto, ' if key == 'variant' else ''}"
                f"{', '.join(checked)} (or several joined by '+', e.g. l2+dropout)") from None
        _check_ranges(resolved, f"{source}: variants.{name}: ")
    if len(set(params.compare)) != len(params.compare):
        raise ParamsError(f"{source}: compare: a variant is listed twice in {list(params.compare)}")
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ``ParamsError`` naming any bad key."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the project root") from None
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, str(path))

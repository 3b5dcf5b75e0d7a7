"""A small real predictor (two LeNets on 12 x 12 grey images, flips on) for the inference tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from foldwise.core.params import Params
from foldwise.inference.predictor import Predictor, save_predictor
from foldwise.training.model_files import NOT_RECORDED
from foldwise.training.models import build_model
from tests.conftest import CLASSES

SHAPE = (1, 12, 12)
STATS = {"mean": [0.3], "std": [0.3]}


def final_checkpoint(p: Params, shape: tuple[int, int, int] = SHAPE) -> dict:
    """What train's model file holds besides the weights (model_files._model_bytes)."""
    params = {k: v for k, v in p.for_variant("baseline").to_dict().items() if k not in NOT_RECORDED}
    return {"params": params, "classes": list(CLASSES), "stats": STATS, "shape": list(shape)}


def make_members(p: Params, n: int = 2, shape: tuple[int, int, int] = SHAPE) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [build_model(shape, len(CLASSES), p).eval() for _ in range(n)]


@pytest.fixture
def small_params() -> Params:
    return dataclasses.replace(Params(), conv_channels=[4, 8], image_size=0)


@pytest.fixture
def predictor_dir(tmp_path, small_params) -> Path:
    """models/predictor/ as evaluate writes it: two members, flips, T = 0.8."""
    folder = tmp_path / "predictor"
    save_predictor(folder, make_members(small_params), True, 0.8, "ensemble+tta", final_checkpoint(small_params),
                   card=lambda summary: f"# Model card\n{summary['used']}\n")
    return folder


@pytest.fixture
def predictor(predictor_dir) -> Predictor:
    from foldwise.inference.predictor import load_predictor

    return load_predictor(predictor_dir)

"""The ONNX export: the whole predictor in one graph that onnxruntime runs to within 1e-4 of torch, for
every model in the registry; a model the exporter cannot translate is one line naming it."""

from __future__ import annotations

import dataclasses

import onnx
import pytest
import torch
from torch import nn

from foldwise.core.errors import UserError
from foldwise.core.params import Params
from foldwise.inference.export import META, OPSET, TOLERANCE, check_parity, export_onnx, onnx_log_probs, open_session
from foldwise.inference.predictor import Predictor
from foldwise.training.models import MODELS, build_model
from tests.conftest import CLASSES
from tests.inference.conftest import STATS


def random_images(n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_the_graph_is_the_predictor_with_its_metadata(tmp_path, predictor, capfd):
    export_onnx(predictor, tmp_path / "m.onnx")
    assert capfd.readouterr() == ("", "")  # the exporter's progress lines stay out of the stage's log
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert [i.name for i in model.graph.input] == ["images"]
    # any batch size, named in the graph; the standard operator set we promise (OPSET)
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", 1, 12, 12]
    assert {o.domain: o.version for o in model.opset_import}[""] == OPSET
    assert [o.name for o in model.graph.output] == ["probabilities"]
    session, summary = open_session(tmp_path / "m.onnx")
    assert summary == predictor.summary() and summary["input"]["size"] == 12
    images = random_images(37, predictor.shape)  # a batch size the example never had
    result = check_parity(session, predictor, [images[:30], images[30:]])
    assert result["images"] == result["argmax_agree"] == 37 and result["passed"]
    assert result["max_abs_probability_difference"] <= TOLERANCE
    assert list(result) == ["images", "argmax_agree", "max_abs_probability_difference", "tolerance", "passed"]
    assert result["tolerance"] == TOLERANCE  # reports/export.json says what it was held to
    probabilities = onnx_log_probs(session, images).exp()
    assert torch.allclose(probabilities.sum(1), torch.ones(37, dtype=torch.float64), atol=1e-5)
    # flips, both members and the temperature are inside: any one left out is told apart
    for changed in (dataclasses.replace(predictor, flip=False), dataclasses.replace(predictor, temperature=1.0),
                    dataclasses.replace(predictor, members=predictor.members[:1])):
        assert not check_parity(session, changed, [images])["passed"]
    assert META in {p.key for p in model.metadata_props}


# torchvision's networks take 1 to 11 s each to export: slow (make test runs them, make quick does not)
@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if entry.pretrained else [])
                                  for n, entry in MODELS.items()])
def test_every_registry_model_exports_and_agrees(tmp_path, name):
    shape = (3, 32, 32)
    p = dataclasses.replace(Params(), model=name)
    member = build_model(shape, len(CLASSES), p).eval()
    # no flips: they trace the network twice (the test above checks them)
    predictor = Predictor([member], False, 0.9, CLASSES, {"mean": [0.3] * 3, "std": [0.3] * 3}, shape, 32, "single",
                          p.to_dict())
    export_onnx(predictor, tmp_path / f"{name}.onnx", name)
    session, _ = open_session(tmp_path / f"{name}.onnx")
    assert check_parity(session, predictor, [random_images(4, shape)])["passed"]


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot trace it into a graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x.flatten(1)[:, :3]
        return -x.flatten(1)[:, :3]


def test_a_model_the_exporter_cannot_translate_is_one_line_naming_it(tmp_path):
    model = DataDependent().eval()
    model.register_parameter("w", nn.Parameter(torch.zeros(1)))  # the predictor reads its device from one
    predictor = Predictor([model], False, 1.0, CLASSES, STATS, (1, 4, 4), 4, "single", {})
    with pytest.raises(UserError) as info:
        export_onnx(predictor, tmp_path / "m.onnx", "mynet")
    message = str(info.value)
    assert message.startswith("model 'mynet' cannot be exported to ONNX (") and "\n" not in message
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(UserError) as info:  # no name given: the class's
        export_onnx(predictor, tmp_path / "m.onnx")
    assert str(info.value) == ("model 'DataDependent' cannot be exported to ONNX (TorchExportError: Failed to export "
                               "the model with torch.export. This is step 1/3 of exporting the model to ONNX. Next "
                               "steps:); foldwise predict still runs it with torch")


def test_a_file_that_is_not_our_onnx_is_one_line(tmp_path, predictor):
    for path, text in ((tmp_path / "none.onnx", "is missing"), (tmp_path / "junk.onnx", "is not a foldwise ONNX")):
        if "junk" in path.name:
            path.write_bytes(b"junk")
        with pytest.raises(UserError, match=text) as info:
            open_session(path)
        assert "\n" not in str(info.value)
    junk = tmp_path / "junk.onnx"
    with pytest.raises(UserError) as info:
        open_session(junk)
    assert str(info.value) == (f"{junk} is not a foldwise ONNX predictor (InvalidProtobuf: [ONNXRuntimeError] : 7 : "
                               f"INVALID_PROTOBUF : Load model from {junk} failed:Protobuf parsing failed.); write it "
                               "again with `dvc repro -f -s export`")
    export_onnx(predictor, tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    del model.metadata_props[:]  # an ONNX model, but not one foldwise wrote
    onnx.save_model(model, str(tmp_path / "foreign.onnx"))
    with pytest.raises(UserError) as info:
        open_session(tmp_path / "foreign.onnx")
    assert str(info.value) == (f"{tmp_path / 'foreign.onnx'} is not a foldwise ONNX predictor (KeyError: 'foldwise'); "
                               "write it again with `dvc repro -f -s export`")


def test_onnxruntime_runs_on_cuda_when_it_can_and_always_falls_back_to_the_cpu():
    import onnxruntime as ort

    from foldwise.inference import export

    available = ort.get_available_providers()
    chosen = export._providers(ort)
    assert chosen[-1] == "CPUExecutionProvider" and set(chosen) <= set(available)
    assert ("CUDAExecutionProvider" in chosen) == ("CUDAExecutionProvider" in available)
    assert chosen.index("CPUExecutionProvider") == len(chosen) - 1  # CUDA, when there, comes first

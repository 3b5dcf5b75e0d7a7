"""MODELS registry: name -> constructor adapting to channels, image size and classes.

A model is added with one entry: ``@register`` on its constructor (as timm's ``register_model``),
or one ``register`` call for a torchvision architecture. Constructors return raw logits
(CrossEntropyLoss applies log-softmax itself; a softmax or ReLU on the output would be a bug). Besides the entries of
``MODELS``, any torchvision classification model name works (``vgg16``,
``mobilenet_v3_small``, ...): torchvision architectures get their first
convolution rebuilt for the dataset's channels, a new final layer for its
classes, and images smaller than the architecture's minimum are upsampled
inside the model.
"""

from __future__ import annotations

import functools
import math
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from foldwise.core.errors import UnknownName

if TYPE_CHECKING:
    from foldwise.core.params import Params

Shape = tuple[int, int, int]  # channels, height, width
Builder = Callable[[Shape, int, "Params"], nn.Module]
DOWNLOAD_TIMEOUT = 20  # seconds without an answer before a weights download gives up


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its constructor, and whether ImageNet weights exist for it (``pretrained``)."""

    build: Builder
    pretrained: bool = False


MODELS: dict[str, ModelEntry] = {}


def register(build: Builder | None = None, *, name: str = "", pretrained: bool = False):  # noqa: ANN201
    """Add a constructor to ``MODELS`` under ``name`` (default: its own name without ``build_``); use
    as ``@register`` or ``@register(pretrained=True)``. Returns the constructor unchanged."""
    def add(fn: Builder) -> Builder:
        key = name or getattr(fn, "__name__", "").removeprefix("build_")
        if not key or key in MODELS:
            raise ValueError(f"model name {key!r} is empty or registered twice")
        MODELS[key] = ModelEntry(fn, pretrained)
        return fn
    return add(build) if build is not None else add


def _scaled(width: int, p: Params) -> int:
    return max(1, round(width * p.width))


@register
def build_softmax(shape: Shape, num_classes: int, p: Params) -> nn.Module:
    """Softmax regression: Flatten + Linear (the loss supplies the softmax)."""
    if p.width != 1:
        raise ValueError(f"width: {p.width} cannot apply to softmax, which has no hidden layers")
    c, h, w = shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))


@register
def build_mlp(shape: Shape, num_classes: int, p: Params) -> nn.Module:
    """Fully connected ReLU network: ``hidden_sizes`` x ``width``, optional BatchNorm and dropout."""
    c, h, w = shape
    layers: list[nn.Module] = [nn.Flatten()]
    inputs = c * h * w
    for size in (_scaled(s, p) for s in p.hidden_sizes):
        layers += [nn.Linear(inputs, size), *([nn.BatchNorm1d(size)] if p.batchnorm else []), nn.ReLU()]
        if p.dropout > 0:
            layers.append(nn.Dropout(p.dropout))
        inputs = size
    layers.append(nn.Linear(inputs, num_classes))
    return nn.Sequential(*layers)


@register
def build_lenet(shape: Shape, num_classes: int, p: Params) -> nn.Module:
    """LeNet-5 layout: two 5x5 convolutions (``conv_channels``; the classic is 6, 16),
    each followed by 2x2 max-pooling, then 120-84 dense layers; all widths x ``width``;
    optional BatchNorm and dropout."""
    c, h, w = shape
    c1, c2 = (_scaled(x, p) for x in p.conv_channels)
    d1, d2 = _scaled(120, p), _scaled(84, p)

    def conv(cin: int, cout: int, pad: int) -> list[nn.Module]:
        # Pooling before BatchNorm normalises 4x fewer values: measured 1.7x
        # faster per epoch on a 2-core CPU, same accuracy.
        bn = [nn.BatchNorm2d(cout)] if p.batchnorm else []
        return [nn.Conv2d(cin, cout, 5, padding=pad, bias=not p.batchnorm), nn.MaxPool2d(2), *bn, nn.ReLU()]

    features = nn.Sequential(*conv(c, c1, 2), *conv(c1, c2, 0 if min(h, w) >= 16 else 2))
    with torch.no_grad():
        flat = features(torch.zeros(1, c, h, w)).numel()
    drop = [nn.Dropout(p.dropout)] if p.dropout > 0 else []
    bn1 = [nn.BatchNorm1d(d1)] if p.batchnorm else []
    bn2 = [nn.BatchNorm1d(d2)] if p.batchnorm else []
    return nn.Sequential(
        features,
        nn.Flatten(),
        nn.Linear(flat, d1), *bn1, nn.ReLU(), *drop,
        nn.Linear(d1, d2), *bn2, nn.ReLU(), *drop,
        nn.Linear(d2, num_classes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm, added to the input (through a 1x1 convolution where the
    stride or the channels change): He et al.'s residual block."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def _small_resnet(shape: Shape, num_classes: int, p: Params, blocks: int) -> nn.Module:
    """He et al.'s ResNet for small images (6 x ``blocks`` + 2 layers): a 3x3 convolution, three
    stages of ``blocks`` residual blocks at 16, 32 and 64 channels x ``width`` (the second and third
    halve the image), global average pooling, dropout when ``dropout`` > 0, and the classifier.
    BatchNorm always: ``batchnorm`` applies to mlp and lenet."""
    widths = [_scaled(x, p) for x in (16, 32, 64)]
    layers: list[nn.Module] = [nn.Conv2d(shape[0], widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                               nn.ReLU()]
    cin = widths[0]
    for stage, cout in enumerate(widths):
        for block in range(blocks):
            layers.append(BasicBlock(cin, cout, 2 if stage > 0 and block == 0 else 1))
            cin = cout
    drop = [nn.Dropout(p.dropout)] if p.dropout > 0 else []
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), *drop, nn.Linear(cin, num_classes))


@register
def build_resnet8(shape: Shape, num_classes: int, p: Params) -> nn.Module:
    """ResNet-8 for small images (one block per stage; 78K weights on 28x28 grey)."""
    return _small_resnet(shape, num_classes, p, 1)


@register
def build_resnet20(shape: Shape, num_classes: int, p: Params) -> nn.Module:
    """ResNet-20 for small images (three blocks per stage; 272K weights on 28x28 grey), as in He et
    al.'s CIFAR-10 experiments."""
    return _small_resnet(shape, num_classes, p, 3)


class Upsample(nn.Module):
    """Enlarges images smaller than an architecture's minimum (AlexNet needs 63x63, VGG 32x32)."""

    def __init__(self, min_size: tuple[int, int]) -> None:
        super().__init__()
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        scale = max(self.min_size[0] / h, self.min_size[1] / w)
        if scale <= 1:
            return x
        return F.interpolate(x, size=(math.ceil(h * scale), math.ceil(w * scale)), mode="bilinear",
                             align_corners=False)


def torchvision_names() -> list[str]:
    """Every torchvision classification model name (``torchvision.models.list_models``)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _weights(name: str):  # noqa: ANN202 - a torchvision WeightsEnum member
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def weights_file(name: str, p: Params) -> Path:
    """The ImageNet weights file for ``name``: ``pretrained_path``, else torchvision's cache.

    A cache miss is downloaded when the network allows; otherwise the error
    says exactly where to put the file.
    """
    if p.pretrained_path:
        path = Path(p.pretrained_path)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained_path: {path} does not exist; point it at the {name} "
                                    f"weights file ({_weights(name).url})")
        return path
    url = _weights(name).url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if cached.is_file():
        return cached
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), progress=True)
    except Exception as exc:  # noqa: BLE001 - any download failure gets the same instructions
        raise FileNotFoundError(
            f"pretrained: true needs the ImageNet weights of {name}, which are not in torchvision's "
            f"cache and could not be downloaded ({type(exc).__name__}: {exc}). How to fix: download "
            f"{url} on a machine with internet access and either put it at {cached} "
            f"(torchvision's cache; TORCH_HOME moves it) or set pretrained_path to where you saved it."
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
    return cached


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def build_torchvision(name: str, shape: Shape, num_classes: int, p: Params) -> nn.Module:
    """A torchvision architecture for ``shape`` and ``num_classes``; ImageNet weights if ``pretrained``.

    The first convolution takes ``shape[0]`` channels (pretrained RGB kernels
    are summed for grey input, which equals feeding the grey image three
    times); the final layer is new, preceded by dropout when ``dropout`` > 0.
    """
    from torchvision.models import get_model

    if p.width != 1:
        raise ValueError(f"width: {p.width} cannot apply to {name}, a fixed torchvision architecture; "
                         f"width changes mlp, lenet, resnet8 and resnet20 only (pick a smaller architecture "
                         f"instead)")
    extra = {"aux_logits": False, "transform_input": False, "init_weights": True} \
        if name in ("googlenet", "inception_v3") else {}
    if name == "inception_v3":
        extra.pop("init_weights")
    model = get_model(name, weights=None, num_classes=1000 if p.pretrained else num_classes, **extra)
    state = None
    if p.pretrained:
        path = weights_file(name, p)
        state = torch.load(path, map_location="cpu", weights_only=True)
    first_name, first = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if shape[0] != first.in_channels:
        _replace(model, first_name, nn.Conv2d(
            shape[0], first.out_channels, first.kernel_size, first.stride, first.padding,
            first.dilation, first.groups, first.bias is not None))
        if state is not None:  # shape[0] is 1: grey
            state[f"{first_name}.weight"] = state[f"{first_name}.weight"].sum(1, keepdim=True)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"pretrained weights in {path} do not fit {name}: {str(exc)[:300]}") from None
    if p.pretrained or p.dropout > 0:
        head_name, head = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
        new = nn.Linear(head.in_features, num_classes) if isinstance(head, nn.Linear) \
            else nn.Conv2d(head.in_channels, num_classes, 1)
        _replace(model, head_name, nn.Sequential(nn.Dropout(p.dropout), new) if p.dropout > 0 else new)
    min_size = tuple(_weights(name).meta.get("min_size", (1, 1)))
    if shape[1] < min_size[0] or shape[2] < min_size[1]:
        model = nn.Sequential(Upsample(min_size), model)
    return model


# torchvision architectures named by the notes; any other torchvision name works too (``model_entry``)
for _name in ("resnet18", "alexnet", "vgg11", "googlenet", "densenet121"):
    register(functools.partial(build_torchvision, _name), name=_name, pretrained=True)


def _init_weights(model: nn.Module, scheme: str) -> None:
    """``kaiming``: He-normal for ReLU nets; ``normal``: N(0, 0.01) as in the softmax notes."""
    if scheme == "default":
        return
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            else:
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name`` (any torchvision classification model has one); unknown names list
    the valid ones."""
    if name in MODELS:
        return MODELS[name]
    if name in torchvision_names():
        return ModelEntry(functools.partial(build_torchvision, name), pretrained=True)
    raise UnknownName(f"unknown model {name!r} (params.yaml key 'model'); valid: {', '.join(MODELS)}, "
                   f"or any torchvision classification model ({', '.join(torchvision_names()[:6])}, ...)")


def build_model(shape: Shape, num_classes: int, p: Params) -> nn.Module:
    """The ``p.model`` network for inputs of ``shape``; unknown names list the valid ones."""
    entry = model_entry(p.model)
    if p.pretrained and not entry.pretrained:
        raise ValueError(f"pretrained: true needs a torchvision model (e.g. resnet18); {p.model} "
                         f"has no ImageNet weights")
    model = entry.build(shape, num_classes, p)
    if p.pretrained:
        # only the new final layer starts from scratch
        head = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
        _init_weights(nn.Sequential(head), p.init)
    else:
        _init_weights(model, p.init)
    return model


def check_model(shape: Shape, num_classes: int, p: Params) -> None:
    """Build ``p.model`` and run two blank images through it, so a bad model, a missing weights
    file or an image size the architecture cannot take fails before any training."""
    model = build_model(shape, num_classes, p).eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *shape))
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise ValueError(f"model {p.model} cannot take {shape[1]}x{shape[2]} images with {shape[0]} "
                         f"channel(s): {str(exc)[:200]}. Set image_size in params.yaml to a size it "
                         f"accepts (224 for transformers)") from None
    if tuple(out.shape) != (2, num_classes):
        raise ValueError(f"model {p.model} gives outputs of shape {tuple(out.shape)}, not (N, {num_classes})")

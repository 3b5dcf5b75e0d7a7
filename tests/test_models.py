import dataclasses

import pytest
import torch
from torch import nn

from foldwise.models import MODELS, build_model
from foldwise.params import Params


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_every_model_trains_on_every_shape(name, shape):
    model = build_model(shape, 10, dataclasses.replace(Params(), model=name, hidden_sizes=(16, 8)))
    x = torch.randn(4, *shape)
    logits = model(x)
    assert logits.shape == (4, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_model_lists_valid_names():
    with pytest.raises(KeyError, match="unknown model 'vgg99'.*valid: softmax, mlp, lenet"):
        build_model((1, 28, 28), 10, dataclasses.replace(Params(), model="vgg99"))


def test_softmax_is_flatten_plus_linear_without_output_activation():
    model = build_model((1, 28, 28), 10, dataclasses.replace(Params(), model="softmax"))
    assert [type(m) for m in model] == [nn.Flatten, nn.Linear]
    assert model[1].in_features == 784


def test_mlp_hidden_sizes_and_dropout_only_in_train_mode():
    p = dataclasses.replace(Params(), model="mlp", hidden_sizes=(200, 200), dropout=0.5)
    model = build_model((1, 28, 28), 10, p)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 200), (200, 200), (200, 10)]
    x = torch.randn(8, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_init_schemes():
    normal = build_model((1, 28, 28), 10, dataclasses.replace(Params(), model="softmax", init="normal"))
    assert normal[1].weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.count_nonzero(normal[1].bias) == 0
    kaiming = build_model((1, 28, 28), 10, dataclasses.replace(Params(), model="softmax", init="kaiming"))
    assert kaiming[1].weight.std().item() == pytest.approx((2 / 784) ** 0.5, rel=0.1)


def test_lenet_batchnorm_switch():
    with_bn = build_model((1, 28, 28), 10, Params())
    without = build_model((1, 28, 28), 10, dataclasses.replace(Params(), batchnorm=False))
    assert any(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules())
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in without.modules())


def test_lenet_conv_channels():
    model = build_model((1, 28, 28), 10, dataclasses.replace(Params(), conv_channels=(6, 16)))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(1, 6), (6, 16)]
    linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert linear.in_features == 16 * 5 * 5  # 28 -> conv pad 2 -> pool 14 -> conv 10 -> pool 5

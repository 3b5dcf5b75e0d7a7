import dataclasses

import pytest
import torch
from torch import nn

from foldwise.core.params import Params
from foldwise.training.models import MODELS, build_model, check_model

# grey 28x28 (MNIST-likes), colour 32x32 (CIFAR), grey 8x8 (digits), a 2-class photo size
SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8), (3, 64, 48)]
SLOW = ("vgg11", "alexnet")  # 8-10 s and 2-3 s a shape: left out of `make quick`


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(MODELS)])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_model_trains_on_every_shape(name, shape):
    p = dataclasses.replace(Params(), model=name, hidden_sizes=(16, 8))
    check_model(shape, 10, p)
    model = build_model(shape, 10, p)
    x = torch.randn(4, *shape)
    logits = model(x)
    assert logits.shape == (4, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_model_lists_valid_names():
    with pytest.raises(KeyError, match="unknown model 'vgg99'.*valid: softmax, mlp, lenet, resnet8, resnet20, "
                                       "resnet18.*or any torchvision classification model"):
        build_model((1, 28, 28), 10, dataclasses.replace(Params(), model="vgg99"))


def test_any_torchvision_name_works_beyond_the_registry():
    model = build_model((1, 28, 28), 5, dataclasses.replace(Params(), model="mobilenet_v3_small"))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 5)


def test_an_architecture_that_needs_a_fixed_size_explains_what_to_set():
    with pytest.raises(ValueError, match="model vit_b_16 cannot take 64x48 images.*Set image_size"):
        check_model((3, 64, 48), 10, dataclasses.replace(Params(), model="vit_b_16"))


def resnet18_imagenet_file(path):
    """A real resnet18 ImageNet-shaped state dict (random values: no download possible here)."""
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    torch.save(state, path)
    return state


def test_pretrained_weights_from_a_local_file_with_a_new_head(tmp_path):
    state = resnet18_imagenet_file(tmp_path / "r18.pth")
    p = dataclasses.replace(Params(), model="resnet18", pretrained=True, pretrained_path=str(tmp_path / "r18.pth"))
    model = build_model((1, 28, 28), 2, p)  # grey input, 2 classes: Dogs vs. Cats style
    got = model.state_dict()
    assert torch.equal(got["layer3.0.conv1.weight"], state["layer3.0.conv1.weight"])
    assert torch.equal(got["bn1.running_mean"], state["bn1.running_mean"])
    assert torch.equal(got["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))  # RGB kernels summed
    assert got["fc.weight"].shape == (2, 512)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 2)


def test_pretrained_weights_from_torchvisions_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    state = resnet18_imagenet_file(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model = build_model((3, 32, 32), 10, dataclasses.replace(Params(), model="resnet18", pretrained=True))
    assert torch.equal(model.state_dict()["conv1.weight"], state["conv1.weight"])


def test_missing_pretrained_weights_say_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache; the download fails offline
    p = dataclasses.replace(Params(), model="resnet18", pretrained=True)
    with pytest.raises(FileNotFoundError, match=r"not in torchvision's cache.*How to fix: download "
                                                r"https://download.pytorch.org/models/resnet18-f37072fd.pth.*"
                                                + str(tmp_path / "hub" / "checkpoints") + r".*pretrained_path"):
        build_model((3, 32, 32), 10, p)
    p = dataclasses.replace(p, pretrained_path=str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="pretrained_path: .*nope.pth does not exist"):
        build_model((3, 32, 32), 10, p)
    with pytest.raises(ValueError, match="pretrained: true needs a torchvision model"):
        build_model((1, 28, 28), 10, dataclasses.replace(Params(), pretrained=True))


def test_width_shrinks_every_hidden_layer():
    small = build_model((1, 28, 28), 10, dataclasses.replace(Params(), width=0.5))
    convs = [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)]
    linears = [m.out_features for m in small.modules() if isinstance(m, nn.Linear)]
    assert convs == [4, 16] and linears == [60, 42, 10]  # conv_channels (8, 32) halved
    mlp = build_model((1, 28, 28), 10, dataclasses.replace(Params(), model="mlp", hidden_sizes=(200, 100), width=0.5))
    assert [m.out_features for m in mlp if isinstance(m, nn.Linear)] == [100, 50, 10]
    with pytest.raises(ValueError, match="width: 0.5 cannot apply to resnet18"):
        build_model((1, 28, 28), 10, dataclasses.replace(Params(), model="resnet18", width=0.5))


def assert_dropout_only_in_training(model: nn.Module) -> None:
    x = torch.randn(8, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_dropout_is_active_only_in_train_mode_in_lenet():
    model = build_model((1, 28, 28), 10, dataclasses.replace(Params(), dropout=0.5))
    assert any(isinstance(m, nn.Dropout) for m in model.modules())
    assert_dropout_only_in_training(model)


def test_softmax_is_flatten_plus_linear_without_output_activation():
    model = build_model((1, 28, 28), 10, dataclasses.replace(Params(), model="softmax"))
    assert [type(m) for m in model] == [nn.Flatten, nn.Linear]
    assert model[1].in_features == 784


def test_mlp_hidden_sizes_and_dropout_only_in_train_mode():
    p = dataclasses.replace(Params(), model="mlp", hidden_sizes=(200, 200), dropout=0.5, batchnorm=False)
    model = build_model((1, 28, 28), 10, p)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 200), (200, 200), (200, 10)]
    assert_dropout_only_in_training(model)


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
    mlp = build_model((1, 28, 28), 10, dataclasses.replace(Params(), model="mlp", hidden_sizes=(20, 10)))
    assert [m.num_features for m in mlp if isinstance(m, nn.BatchNorm1d)] == [20, 10]


def test_lenet_conv_channels():
    model = build_model((1, 28, 28), 10, dataclasses.replace(Params(), conv_channels=(6, 16)))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(1, 6), (6, 16)]
    linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert linear.in_features == 16 * 5 * 5  # 28 -> conv pad 2 -> pool 14 -> conv 10 -> pool 5


def test_one_register_line_makes_a_model_buildable_by_name_and_a_second_one_is_refused(monkeypatch):
    import dataclasses

    import torch
    from torch import nn

    from foldwise.core.params import Params
    from foldwise.training import models

    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))  # leave the real registry as it was

    @models.register
    def build_tiny(shape, num_classes, p):
        return nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * shape[1] * shape[2], num_classes))

    p = dataclasses.replace(Params(), model="tiny")
    assert build_model((1, 4, 4), 3, p)(torch.zeros(2, 1, 4, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="pretrained: true needs a torchvision model"):
        build_model((1, 4, 4), 3, dataclasses.replace(p, pretrained=True))
    with pytest.raises(ValueError, match="registered twice"):
        models.register(build_tiny)


@pytest.mark.parametrize("name, blocks, weights", [("resnet8", 1, 77_754), ("resnet20", 3, 272_186)])
def test_small_resnets_have_6n_plus_2_layers_three_stages_and_scale_with_width(name, blocks, weights):
    """He et al.'s CIFAR ResNets: 6n + 2 weighted layers (a 3x3 convolution, 3 stages of n blocks of
    two, the classifier; 1x1 shortcuts where the shape changes), 16/32/64 channels, 28 -> 14 -> 7."""
    p = dataclasses.replace(Params(), model=name)
    model = build_model((1, 28, 28), 10, p)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    main = [m for m in convs if m.kernel_size == (3, 3)]
    assert len(main) + 1 == 6 * blocks + 2 and len(convs) - len(main) == 2  # two 1x1 shortcuts
    assert sum(t.numel() for t in model.parameters()) == weights
    assert sorted({m.out_channels for m in main}) == [16, 32, 64]
    stages = {}
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(lambda m, i, o: stages.setdefault(m.out_channels, set()).add(o.shape[-1]))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert stages == {16: {28}, 32: {14}, 64: {7}}
    half = build_model((1, 28, 28), 10, dataclasses.replace(p, width=0.5, dropout=0.2))
    assert sorted({m.out_channels for m in half.modules() if isinstance(m, nn.Conv2d)}) == [8, 16, 32]
    assert any(isinstance(m, nn.Dropout) for m in half.modules())


def test_a_residual_block_adds_its_input_through_the_shortcut():
    from foldwise.training.models import BasicBlock

    same, down = BasicBlock(4, 4, 1).eval(), BasicBlock(4, 8, 2).eval()
    for block in (same, down):
        nn.init.zeros_(block.body[-1].weight)  # the body's last BatchNorm scales it to nothing
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(same(x), torch.relu(x))
    assert torch.equal(down(x), torch.relu(down.shortcut(x))) and down(x).shape == (2, 8, 3, 3)

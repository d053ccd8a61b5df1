import inspect

import pytest
import torch

from kdbench.measure import count_params as count
from kdbench.zoo import MODELS

DATA_ARGS = ("num_classes", "in_channels", "image_size")


def build(name, num_classes, in_channels, image_size, **options):
    factory = MODELS[name]
    data = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    params = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in data.items() if k in params}, **options)


pytestmark = pytest.mark.usefixtures("no_onednn")


@pytest.mark.parametrize("shape", [(1, 28, 10), (3, 32, 100), (3, 8, 10)], ids=["1x28-10", "3x32-100", "3x8-10"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_and_backward(name, shape):
    in_channels, size, num_classes = shape
    torch.manual_seed(0)
    # a quarter width keeps the layer structure and makes ResNet-50/VGG-19 cheap on CPU
    options = {"width": 0.25} if "width" in inspect.signature(MODELS[name]).parameters else {}
    model = build(name, num_classes, in_channels, size, **options)
    out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, num_classes)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_options_have_typed_defaults(name):
    for p in inspect.signature(MODELS[name]).parameters.values():
        assert p.kind == p.POSITIONAL_OR_KEYWORD and p.default is not inspect.Parameter.empty, p.name
        if p.name not in DATA_ARGS:
            assert type(p.default) is p.annotation, p.name  # the core types config values by the default


@pytest.mark.parametrize(
    "name, shape, options, expected",
    [
        ("resnet18", (3, 32, 100), {}, 11_220_132),  # AKD's ResNet18_8x (DFAD)
        ("resnet18", (3, 32, 100), {"width": 0.5}, 2_820_740),  # AKD's ResNet18_8x_Small
        ("resnet34", (3, 32, 100), {}, 21_328_292),  # DFAD's ResNet34_8x
        ("resnet50", (3, 32, 100), {}, 23_705_252),
        ("vgg11_bn", (3, 32, 10), {}, 9_231_114),
        ("vgg19_bn", (3, 32, 10), {}, 20_040_522),
        ("small-cnn", (1, 28, 10), {}, 207_274),  # the spec's shared Fashion-MNIST teacher
        ("tiny-cnn", (1, 28, 10), {}, 9_274),  # the AKD prototype's student
        ("mlp", (1, 28, 10), {}, 101_770),  # 784 -> 128 -> 10
    ],
)
def test_parameter_counts(name, shape, options, expected):
    in_channels, size, num_classes = shape
    with torch.device("meta"):  # shapes only: skips the weight initialisation
        model = build(name, num_classes, in_channels, size, **options)
    assert count(model) == expected


def test_mlp_depth():
    model = build("mlp", 10, 1, 28, hidden=64, depth=2)
    assert count(model) == 784 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    assert count(build("mlp", 10, 1, 28, depth=0)) == 7850

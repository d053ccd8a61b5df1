import inspect
import re

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
        # the CIFAR-100 pairs: the counts of mdistiller's (a08d46f, mdistiller/models/cifar) and RepDistiller's
        # (b84f547, models/) definitions, instantiated at num_classes=100 (both give the same numbers)
        ("resnet8x4", (3, 32, 100), {}, 1_233_540),
        ("resnet32x4", (3, 32, 100), {}, 7_433_860),
        ("resnet20", (3, 32, 100), {}, 278_324),
        ("resnet56", (3, 32, 100), {}, 861_620),
        ("wrn-40-1", (3, 32, 100), {}, 569_780),
        ("wrn-40-2", (3, 32, 100), {}, 2_255_156),
        ("vgg8-cifar", (3, 32, 100), {}, 3_965_028),
        ("vgg13-cifar", (3, 32, 100), {}, 9_462_180),
        ("shufflenetv2", (3, 32, 100), {}, 1_355_528),  # ShuffleV2
        ("mobilenetv2", (3, 32, 100), {}, 812_836),  # mobile_half
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


# The CIFAR pairs' feature paths at 3x32x32: the references' feats[1:] shapes (C, H, W), then the
# pooled feature's size. The pre-ReLU paths (preact_feats[1:]) have the stages' shapes.
STAGES = {
    "resnet8x4": ([(64, 32, 32), (128, 16, 16), (256, 8, 8)], 256),
    "resnet32x4": ([(64, 32, 32), (128, 16, 16), (256, 8, 8)], 256),
    "resnet20": ([(16, 32, 32), (32, 16, 16), (64, 8, 8)], 64),
    "resnet56": ([(16, 32, 32), (32, 16, 16), (64, 8, 8)], 64),
    "wrn-40-1": ([(16, 32, 32), (32, 16, 16), (64, 8, 8)], 64),
    "wrn-40-2": ([(32, 32, 32), (64, 16, 16), (128, 8, 8)], 128),
    "vgg8-cifar": ([(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)], 512),
    "vgg13-cifar": ([(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)], 512),
    "shufflenetv2": ([(116, 16, 16), (232, 8, 8), (464, 4, 4)], 1024),
    "mobilenetv2": ([(12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)], 1280),
}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_cifar_feature_paths(name):
    from kdbench.features import FeatureTap

    torch.manual_seed(0)
    model = build(name, 100, 3, 32)
    paths = model.feature_paths
    stages, pooled = STAGES[name]
    tap = FeatureTap(model, paths["stages"] + paths["preact"] + [paths["pooled"]])
    model(torch.randn(2, 3, 32, 32))
    assert [tuple(tap[p].shape[1:]) for p in paths["stages"]] == stages
    assert [tuple(tap[p].shape[1:]) for p in paths["preact"]] == stages
    assert tuple(tap[paths["pooled"]].shape[1:]) == (pooled,)
    for stage, preact in zip(paths["stages"], paths["preact"]):
        pre, out = tap[preact], tap[stage]
        if name.startswith(("resnet", "vgg")):  # the stage's output is the ReLU of its pre-ReLU map, kept intact
            assert (pre < 0).any() and torch.equal(torch.relu(pre), out)
        elif name == "shufflenetv2":  # ... and then channel-shuffled
            n, c, h, w = pre.shape
            assert (pre < 0).any() and torch.equal(torch.relu(pre).reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w), out)
        elif name == "mobilenetv2":  # linear bottlenecks: no ReLU at a stage's end
            assert pre is out
        else:  # WRN (pre-activation): the BN that the next ReLU follows, taken on the stage's output
            assert (pre < 0).any() and (out < 0).any()


def test_list_layers_shows_the_feature_paths(monkeypatch, tmp_path, cli):
    import datasets_on_disk as disk

    monkeypatch.setenv("HOME", str(tmp_path))  # data.root's default, ~/.cache/kdbench/data
    disk.install_cifar(monkeypatch, tmp_path / ".cache" / "kdbench" / "data", "cifar100", n_train=8, n_test=4)
    code, out, _ = cli("list", "students", "--layers", "resnet8x4", "--dataset", "cifar100")
    assert code == 0 and "input 3x32x32" in out
    assert "stages: layer1, layer2, layer3" in out and "preact: layer1.0.preact, layer2.0.preact, layer3.0.preact" in out
    assert "pooled: flatten" in out
    assert re.search(r"^ +layer2\.0\.preact +Identity +128x16x16$", out, re.M)


@pytest.mark.parametrize("name, count, keys", [
    ("resnet32x4", 206, ["conv1.weight", "layer1.0.downsample.0.weight", "layer3.4.bn2.running_var", "fc.bias"]),
    ("resnet56", 344, ["layer2.0.downsample.1.weight", "layer3.8.conv2.weight", "fc.weight"]),
    ("wrn-40-2", 227, ["block1.layer.0.convShortcut.weight", "block3.layer.5.bn2.num_batches_tracked", "bn1.weight", "fc.weight"]),
    ("vgg13-cifar", 72, ["block0.0.weight", "block0.3.bias", "block4.4.running_mean", "classifier.weight"]),
])
def test_teachers_take_the_references_checkpoint_keys(name, count, keys):
    """The teachers' state dicts are named as mdistiller's / RepDistiller's (their key lists, read
    off their definitions: the same count and these keys), so their checkpoints' "model" entries load."""
    with torch.device("meta"):
        state = build(name, 100, 3, 32).state_dict()
    assert len(state) == count and all(k in state for k in keys)

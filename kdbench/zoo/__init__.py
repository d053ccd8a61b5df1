"""Shared architectures. ``MODELS`` maps a name to a factory taking keyword arguments: the data-derived
``num_classes`` / ``in_channels`` / ``image_size`` (where declared) and the model's own typed options."""
from kdbench.zoo.cifar_resnet import resnet8x4, resnet20, resnet32x4, resnet56
from kdbench.zoo.cifar_vgg import vgg8_cifar, vgg13_cifar
from kdbench.zoo.mobilenet import mobilenetv2
from kdbench.zoo.resnet import resnet18, resnet34, resnet50
from kdbench.zoo.shufflenet import shufflenetv2
from kdbench.zoo.small import mlp, small_cnn, tiny_cnn
from kdbench.zoo.vgg import vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn
from kdbench.zoo.wrn import wrn_40_1, wrn_40_2

MODELS = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "vgg11_bn": vgg11_bn,
    "vgg13_bn": vgg13_bn,
    "vgg16_bn": vgg16_bn,
    "vgg19_bn": vgg19_bn,
    "small-cnn": small_cnn,
    "tiny-cnn": tiny_cnn,
    "mlp": mlp,
    # the CIFAR-100 pairs of the distillation benchmarks (RepDistiller, mdistiller); feature paths
    # per stage in each model's feature_paths (`kdbench list students --layers NAME`)
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "wrn-40-1": wrn_40_1,
    "wrn-40-2": wrn_40_2,
    "vgg8-cifar": vgg8_cifar,
    "vgg13-cifar": vgg13_cifar,
    "shufflenetv2": shufflenetv2,
    "mobilenetv2": mobilenetv2,
}

__all__ = ["MODELS"] + [f.__name__ for f in MODELS.values()]

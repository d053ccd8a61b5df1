"""Shared architectures. ``MODELS`` maps a name to a factory taking keyword arguments: the data-derived
``num_classes`` / ``in_channels`` / ``image_size`` (where declared) and the model's own typed options."""
from kdbench.zoo.resnet import resnet18, resnet34, resnet50
from kdbench.zoo.small import mlp, small_cnn, tiny_cnn
from kdbench.zoo.vgg import vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn

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
}

__all__ = ["MODELS"] + [f.__name__ for f in MODELS.values()]

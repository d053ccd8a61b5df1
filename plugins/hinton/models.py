"""Architectures of the Hinton-KD seed (003, hee9joon's code) that the built-in zoo does not have.

- ``hinton_cnn``: the source's ``StudentModel``, three blocks of Conv3x3(pad 1)-ReLU-MaxPool2-BN (in
  that order) at 32/64/128 channels, then one Linear. 114,186 parameters on CIFAR-10 (3x32x32).
- ``vgg19_bn_torchvision``: the source's teacher, torchvision ``vgg19_bn`` with its classifier replaced
  by one Linear(25,088 -> classes). On 32x32 inputs the features end at 512x1x1, which torchvision's
  AdaptiveAvgPool2d(7) replicates to 512x7x7. 20,286,282 parameters on CIFAR-10. (The zoo's
  ``vgg19_bn`` is the usual CIFAR-style VGG with a 512 -> classes head.)

Both apply the source's default ``--init he`` (``init_weights_kaiming``: kaiming_normal_, fan_in, a=0,
on every Conv and Linear weight; biases and BN keep PyTorch's defaults); ``init="default"`` keeps
PyTorch's (or torchvision's) own initialisation.
"""
import torch
import torch.nn as nn


def init_he(model):
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
    return model


def apply_init(model, init):
    if init == "he":
        return init_he(model)
    if init == "default":
        return model
    raise ValueError(f"init must be 'he' (the source's) or 'default', got {init!r}")


class HintonCNN(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, image_size=32, width=1.0):
        super().__init__()
        layers, channels, size = [], in_channels, image_size
        for c in (32, 64, 128):
            out = max(1, round(c * width))
            layers += [nn.Conv2d(channels, out, 3, padding=1, stride=1), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2, 2), nn.BatchNorm2d(out)]
            channels, size = out, size // 2
        self.main = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(channels * size * size, num_classes))

    def forward(self, x):
        return self.fc(self.main(x).flatten(1))


def hinton_cnn(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: float = 1.0, init: str = "he"):
    """The source's 3-block student CNN (114,186 parameters on CIFAR-10 at width 1)."""
    return apply_init(HintonCNN(num_classes, in_channels, image_size, width), init)


class TorchvisionVGG(nn.Module):
    """torchvision's VGG layout (features, avgpool, classifier: same state_dict keys as the source's
    model) without building the 4096-wide classifier that the source throws away."""

    def __init__(self, features, num_classes):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Linear(512 * 7 * 7, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg19_bn_torchvision(num_classes: int = 10, in_channels: int = 3, init: str = "he"):
    """torchvision vgg19_bn with classifier = Linear(25,088, classes), as the source's TeacherModel('vgg')."""
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["E"], batch_norm=True)
    if in_channels != 3:
        features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
    model = TorchvisionVGG(features, num_classes)
    # torchvision's own initialisation (init="default"), then the source's He init on top (init="he")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.constant_(m.bias, 0)
    return apply_init(model, init)

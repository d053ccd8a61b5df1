"""The CIFAR VGGs of the distillation benchmarks (RepDistiller / mdistiller ``models/vgg.py``):
five blocks of 3x3 conv-BN-ReLU, 2x2 max-pools after the first three (so on 32x32 inputs the last
two blocks both run at 4x4), global average pool, one Linear. vgg8 is their configuration "S" (one
conv per block), vgg13 "B" (two). Not the zoo's ``vgg13_bn``, which pools after every block.

Feature paths (``model.feature_paths``): the blocks ``block1..4`` after their ReLU (the
references' ``feats[1:]``), the BN before each block's last ReLU (``preact_feats[1:]``) and
``flatten``, the pooled feature (``pooled_feat``)."""
import math

import torch.nn as nn

CONFIGS = {"vgg8": [[64], [128], [256], [512], [512]], "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]}


def block(in_channels, widths):
    layers = []
    for width in widths:
        # ReLU not in place: a hook on the BN before it keeps the tensor it would overwrite
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        in_channels = width
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    def __init__(self, config, num_classes=100, in_channels=3):
        super().__init__()
        channels = [in_channels] + [widths[-1] for widths in config]
        self.block0, self.block1, self.block2, self.block3, self.block4 = (block(channels[i], config[i]) for i in range(5))
        # ceil_mode: odd sizes round up (28 -> 14 -> 7 -> 4); on 32x32 the same as the references' pools
        self.pool0, self.pool1, self.pool2 = (nn.MaxPool2d(2, ceil_mode=True) for _ in range(3))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)
        self.feature_paths = {
            "stages": ["block1", "block2", "block3", "block4"],
            "preact": [f"block{k}.{3 * len(config[k]) - 2}" for k in (1, 2, 3, 4)],
            "pooled": "flatten",
        }

    def forward(self, x):
        out = self.pool0(self.block0(x))
        out = self.pool1(self.block1(out))
        out = self.pool2(self.block2(out))
        out = self.block4(self.block3(out))
        return self.classifier(self.flatten(self.pool(out)))


def vgg8_cifar(num_classes: int = 100, in_channels: int = 3):
    """VGG-8 ("S"): 3,965,028 parameters at 100 classes."""
    return CifarVGG(CONFIGS["vgg8"], num_classes, in_channels)


def vgg13_cifar(num_classes: int = 100, in_channels: int = 3):
    """VGG-13 ("B"): 9,462,180 parameters at 100 classes."""
    return CifarVGG(CONFIGS["vgg13"], num_classes, in_channels)

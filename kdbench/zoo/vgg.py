"""CIFAR-style VGG with batch norm: 3x3 conv-BN-ReLU stacks, max-pools, global average pool, one Linear.

The max-pools round up (ceil_mode), so any input size works: 32x32 ends at 1x1 as usual, and on
28x28 (or 8x8) the maps go 28-14-7-4-2-1 (8-4-2-1-1-1) instead of shrinking to nothing."""
import torch.nn as nn

# Channel counts per conv; "M" is a 2x2 max-pool.
CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, config, num_classes=10, in_channels=3, width=1.0):
        super().__init__()
        layers, channels = [], in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                out = max(1, round(v * width))
                layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():  # torchvision's VGG initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg11_bn(num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
    return VGG(CONFIGS["vgg11"], num_classes, in_channels, width)


def vgg13_bn(num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
    return VGG(CONFIGS["vgg13"], num_classes, in_channels, width)


def vgg16_bn(num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
    return VGG(CONFIGS["vgg16"], num_classes, in_channels, width)


def vgg19_bn(num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
    return VGG(CONFIGS["vgg19"], num_classes, in_channels, width)

"""MobileNetV2 (Sandler et al. 2018) as the distillation benchmarks define it for CIFAR
(RepDistiller / mdistiller ``models/mobilenetv2.py``, their ``mobile_half``: expansion 6, width
0.5): a stride-2 stem, seven groups of inverted residual blocks, a 1x1 conv to 1280 channels,
global average pool, one Linear.

Feature paths (``model.feature_paths``): the ends of groups ``blocks.1``, ``blocks.2``,
``blocks.4``, ``blocks.6`` (the references' ``feats[1:]``: 16x16, 8x8, 4x4, 2x2 on 32x32 inputs),
which are also the pre-ReLU outputs (``preact``: each block ends in a linear bottleneck, BN with
no ReLU; the references define no preact_feats for it), and ``flatten``, the pooled 1280-d feature
(``pooled_feat``)."""
import math

import torch.nn as nn

# expansion t, output channels c, blocks n, first stride s (MobileNetV2's table; the references' order)
GROUPS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def conv_bn_relu(in_channels, out_channels, kernel, stride=1, groups=1):
    return [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU()]


class InvertedResidual(nn.Module):
    def __init__(self, in_channels, out_channels, stride, expansion):
        super().__init__()
        hidden = in_channels * expansion
        self.residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            *conv_bn_relu(in_channels, hidden, 1),
            *conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),  # linear bottleneck
        )

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, width=0.5, num_classes=100, in_channels=3):
        super().__init__()
        channels = int(32 * width)
        self.conv1 = nn.Sequential(*conv_bn_relu(in_channels, channels, 3, 2))
        groups = []
        for t, c, n, s in GROUPS:
            out = int(c * width)
            groups.append(nn.Sequential(*[InvertedResidual(channels if i == 0 else out, out, s if i == 0 else 1, t) for i in range(n)]))
            channels = out
        self.blocks = nn.ModuleList(groups)
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = nn.Sequential(*conv_bn_relu(channels, last, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)  # the references' AvgPool2d(2, ceil_mode=True) on 32x32 inputs
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)
        stages = ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]
        self.feature_paths = {"stages": stages, "preact": stages, "pooled": "flatten"}

    def forward(self, x):
        out = self.conv1(x)
        for group in self.blocks:
            out = group(out)
        return self.classifier(self.flatten(self.pool(self.conv2(out))))


def mobilenetv2(num_classes: int = 100, in_channels: int = 3, width: float = 0.5):
    """MobileNetV2 at width 0.5 (the references' ``mobile_half``): 812,836 parameters at 100 classes."""
    return MobileNetV2(width, num_classes, in_channels)

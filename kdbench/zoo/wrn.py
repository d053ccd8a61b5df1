"""Wide ResNets for CIFAR (Zagoruyko and Komodakis 2016) as the distillation benchmarks define them
(RepDistiller / mdistiller ``models/wrn.py``): pre-activation blocks (BN-ReLU-conv twice), three
stages of 16k, 32k and 64k channels, a final BN-ReLU, global average pool, one Linear.

Feature paths (``model.feature_paths``): the stages ``block1..3`` (the references' ``feats[1:]``,
the residual sums: a pre-activation net has no ReLU at a stage's end), their pre-ReLU outputs
``block2.layer.0.bn1``, ``block3.layer.0.bn1``, ``bn1`` (``preact_feats[1:]``: the BN that the
next ReLU follows) and ``flatten``, the pooled feature after the final BN-ReLU (``pooled_feat``).
Parameters are named as in the references (``block1.layer.0.convShortcut``, ...), so their
checkpoints' state dicts load as they are."""
import math

import torch.nn as nn


class BasicBlock(nn.Module):
    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()  # not in place: a hook on bn1 keeps the tensor it would overwrite
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward(self, x):
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        # where the shape changes, the shortcut convolves the activated input (the references' order)
        return out + (x if self.equal_in_out else self.convShortcut(activated))


class Stage(nn.Module):
    """The references' NetworkBlock: blocks in ``layer``, the name their checkpoints use."""

    def __init__(self, blocks):
        super().__init__()
        self.layer = nn.Sequential(*blocks)

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth, widen_factor, num_classes=100, in_channels=3):
        super().__init__()
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        blocks = (depth - 4) // 6  # depth 6n + 4
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)
        stages = []
        for i in range(3):
            stride = 1 if i == 0 else 2
            stages.append(Stage([BasicBlock(channels[i] if j == 0 else channels[i + 1], channels[i + 1], stride if j == 0 else 1)
                                 for j in range(blocks)]))
        self.block1, self.block2, self.block3 = stages
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)  # the references' avg_pool2d(8) on 32x32 inputs
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)
        self.feature_paths = {
            "stages": ["block1", "block2", "block3"],
            "preact": ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"],
            "pooled": "flatten",
        }

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.flatten(self.pool(self.relu(self.bn1(out)))))


def wrn_40_2(num_classes: int = 100, in_channels: int = 3):
    """WRN-40-2: 2,255,156 parameters at 100 classes."""
    return WideResNet(40, 2, num_classes, in_channels)


def wrn_40_1(num_classes: int = 100, in_channels: int = 3):
    """WRN-40-1: 569,780 parameters at 100 classes."""
    return WideResNet(40, 1, num_classes, in_channels)

"""The CIFAR ResNets of the distillation benchmarks (RepDistiller / mdistiller ``models/resnet.py``):
a 3x3 stem, three stages of basic blocks at 32x32, 16x16 and 8x8, global average pool, one Linear.
resnet20/56 are He et al.'s 16-32-64 nets, resnet8x4/32x4 the 4x wider 64-128-256 ones (stem 32).

Feature paths (``model.feature_paths``; ``python -m kdbench list students --layers resnet8x4
--dataset cifar100``): the stages ``layer1..3`` after their ReLU (the references' ``feats[1:]``),
each stage's pre-ReLU output ``layerK.<last block>.preact`` (``preact_feats[1:]``: the residual sum
before the last ReLU) and ``flatten``, the pooled feature (``pooled_feat``)."""
import torch.nn as nn


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()  # not in place: a hook on `preact` keeps the tensor it would overwrite
        self.preact = nn.Identity()  # names the residual sum before the ReLU, for feature hooks
        self.downsample = None
        if stride != 1 or in_planes != planes:  # 1x1 conv + BN where the block changes shape (option B)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.preact(out + shortcut))


class CifarResNet(nn.Module):
    def __init__(self, depth, widths, num_classes=100, in_channels=3):
        super().__init__()
        blocks = (depth - 2) // 6  # depth 6n + 2
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        in_planes, stages = widths[0], []
        for i, planes in enumerate(widths[1:]):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*[BasicBlock(in_planes if j == 0 else planes, planes, stride if j == 0 else 1)
                                          for j in range(blocks)]))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)  # the references' AvgPool2d(8) on 32x32 inputs
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        last = blocks - 1
        self.feature_paths = {
            "stages": ["layer1", "layer2", "layer3"],
            "preact": [f"layer{k}.{last}.preact" for k in (1, 2, 3)],
            "pooled": "flatten",
        }

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(self.flatten(self.pool(out)))


def resnet20(num_classes: int = 100, in_channels: int = 3):
    """278,324 parameters at 100 classes."""
    return CifarResNet(20, [16, 16, 32, 64], num_classes, in_channels)


def resnet56(num_classes: int = 100, in_channels: int = 3):
    """861,620 parameters at 100 classes."""
    return CifarResNet(56, [16, 16, 32, 64], num_classes, in_channels)


def resnet8x4(num_classes: int = 100, in_channels: int = 3):
    """1,233,540 parameters at 100 classes."""
    return CifarResNet(8, [32, 64, 128, 256], num_classes, in_channels)


def resnet32x4(num_classes: int = 100, in_channels: int = 3):
    """7,433,860 parameters at 100 classes."""
    return CifarResNet(32, [32, 64, 128, 256], num_classes, in_channels)

"""ShuffleNetV2 (Ma et al. 2018, 1x: 116-232-464 channels, 3-7-3 blocks) as the distillation
benchmarks define it for CIFAR (RepDistiller / mdistiller ``models/ShuffleNetv2.py``): a 1x1 stem
with no stride or pooling, so the stages run at 16x16, 8x8 and 4x4 on 32x32 inputs, a 1x1 conv to
1024 channels, global average pool, one Linear.

Feature paths (``model.feature_paths``): the stages ``layer1..3`` (the references' ``feats[1:]``),
each stage's last block before its ReLU and channel shuffle, ``layerK.<last>.preact``
(``preact_feats[1:]``: the untouched half next to the branch's last BN) and ``flatten``, the pooled
1024-d feature (``pooled_feat``)."""
import torch
import torch.nn as nn


class ChannelShuffle(nn.Module):
    def __init__(self, groups=2):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        return x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def conv_bn(in_channels, out_channels, kernel=1, stride=1, groups=1):
    padding = kernel // 2
    return [nn.Conv2d(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(out_channels)]


class BasicBlock(nn.Module):
    """Half the channels pass untouched, the other half through 1x1 -> 3x3 depthwise -> 1x1."""

    def __init__(self, channels):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(*conv_bn(half, half), nn.ReLU(), *conv_bn(half, half, 3, groups=half), *conv_bn(half, half))
        self.preact = nn.Identity()  # names the concatenation before the ReLU, for feature hooks
        self.relu = nn.ReLU()  # not in place: a hook on `preact` keeps the tensor it would overwrite
        self.shuffle = ChannelShuffle()

    def forward(self, x):
        half = x.shape[1] // 2
        kept = x[:, :half]
        # the kept half is the previous block's output, already >= 0, so the ReLU of the
        # concatenation is the references' cat(kept, relu(branch))
        return self.shuffle(self.relu(self.preact(torch.cat([kept, self.branch(x[:, half:])], 1))))


class DownBlock(nn.Module):
    """Both halves see the whole input, each with a stride-2 depthwise conv: the map halves."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        mid = out_channels // 2
        self.left = nn.Sequential(*conv_bn(in_channels, in_channels, 3, 2, groups=in_channels), *conv_bn(in_channels, mid), nn.ReLU())
        self.right = nn.Sequential(*conv_bn(in_channels, mid), nn.ReLU(), *conv_bn(mid, mid, 3, 2, groups=mid), *conv_bn(mid, mid), nn.ReLU())
        self.shuffle = ChannelShuffle()

    def forward(self, x):
        return self.shuffle(torch.cat([self.left(x), self.right(x)], 1))


class ShuffleNetV2(nn.Module):
    def __init__(self, widths=(116, 232, 464, 1024), blocks=(3, 7, 3), num_classes=100, in_channels=3):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(in_channels, 24), nn.ReLU())
        stages, channels = [], 24
        for width, n in zip(widths[:3], blocks):
            stages.append(nn.Sequential(DownBlock(channels, width), *[BasicBlock(width) for _ in range(n)]))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.head = nn.Sequential(*conv_bn(channels, widths[3]), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)  # the references' avg_pool2d(4) on 32x32 inputs
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(widths[3], num_classes)
        self.feature_paths = {
            "stages": ["layer1", "layer2", "layer3"],
            "preact": [f"layer{k}.{n}.preact" for k, n in zip((1, 2, 3), blocks)],
            "pooled": "flatten",
        }

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.linear(self.flatten(self.pool(self.head(out))))


def shufflenetv2(num_classes: int = 100, in_channels: int = 3):
    """ShuffleNetV2 1x: 1,355,528 parameters at 100 classes (PyTorch's default initialisation, as the references)."""
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels)

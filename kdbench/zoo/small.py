"""Small models for the CPU-scale profiles (seeds-spec, "Minimal CPU profile")."""
import torch.nn as nn


def conv_out(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def conv_trunk(in_channels, c1, c2):
    """Conv(5x5, s2, p2)-ReLU-BN -> Conv(3x3, s2, p1)-ReLU-BN. The spec's "3x3, s2" conv needs padding 1:
    it is what maps 14x14 to 7x7 and reproduces its counts (207,274 and 9,274 parameters)."""
    return [
        nn.Conv2d(in_channels, c1, 5, 2, 2), nn.ReLU(), nn.BatchNorm2d(c1),
        nn.Conv2d(c1, c2, 3, 2, 1), nn.ReLU(), nn.BatchNorm2d(c2),
        nn.Flatten(),
    ]


def trunk_features(image_size, c2):
    return c2 * conv_out(conv_out(image_size, 5, 2, 2), 3, 2, 1) ** 2


def small_cnn(num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
              c1: int = 16, c2: int = 32, hidden: int = 128, dropout: float = 0.3):
    """The spec's shared Fashion-MNIST teacher (207,274 parameters at 1x28x28, 10 classes)."""
    return nn.Sequential(
        *conv_trunk(in_channels, c1, c2),
        nn.Linear(trunk_features(image_size, c2), hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def tiny_cnn(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, c1: int = 8, c2: int = 16):
    """The AKD prototype's student (9,274 parameters at 1x28x28, 10 classes)."""
    return nn.Sequential(*conv_trunk(in_channels, c1, c2), nn.Linear(trunk_features(image_size, c2), num_classes))


def mlp(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, hidden: int = 128, depth: int = 1):
    """flatten -> [Linear(hidden) -> ReLU] x depth -> Linear(num_classes); 101,770 parameters at 784->128->10."""
    layers, features = [nn.Flatten()], in_channels * image_size * image_size
    for _ in range(depth):
        layers += [nn.Linear(features, hidden), nn.ReLU()]
        features = hidden
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)

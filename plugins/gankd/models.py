"""DCGAN generators and discriminator for GAN knowledge distillation (source 002).

The source's code is lost; its README gives the layer outline and two parameter counts (teacher
1,961,728, student 784,640), which Keras ``count_params()`` reproduces exactly for the generators
alone with noise dim 100, a bias-free Dense, BatchNorm on the Dense output (Keras counts its moving
mean and variance too), bias-free 4x4 ``Conv2DTranspose`` layers each followed by BatchNorm, and a
bias-free 4x4 output ``Conv2DTranspose`` to one channel with tanh (the TensorFlow DCGAN tutorial's
style). ``keras_param_count`` counts like Keras, so tests check both numbers.

Layouts (``width`` scales every channel count; ``kernel_s1`` is the kernel of the stride-1 layer):

    teacher  z -> Dense 7x7x256 -> BN -> LReLU -> ConvT 128 (s1) -> BN -> LReLU
               -> ConvT 64 (s2) -> BN -> LReLU -> ConvT 1 (s2) -> tanh          28x28x1
    student  z -> Dense 7x7x128 -> BN -> LReLU -> ConvT 64 (s2) -> BN -> LReLU
               -> ConvT 1 (s2) -> tanh                                          28x28x1

The hidden outputs pair up by shape: teacher 7x7x128 <-> student 7x7x128 (its Dense output) and
teacher 14x14x64 <-> student 14x14x64, so intermediate outputs can be matched without an adapter.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class SameConvTranspose2d(nn.ConvTranspose2d):
    """A transposed convolution with Keras ``padding="same"``: the output is input * stride,
    cropped from the full output as TensorFlow does (the extra pixel of an odd crop at the end)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, bias=False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=bias)

    def forward(self, x):
        y = super().forward(x)
        out_h, out_w = x.shape[-2] * self.stride[0], x.shape[-1] * self.stride[1]
        top = (y.shape[-2] - out_h) // 2
        left = (y.shape[-1] - out_w) // 2
        return y[..., top: top + out_h, left: left + out_w]


class DCGANGenerator(nn.Module):
    """z [B, nz] -> image [B, C, H, W] in [-1, 1], with the hidden outputs exposed.

    ``channels`` are the Dense output channels and then each hidden ConvT's; ``strides`` are the
    strides of the hidden ConvTs and then the output ConvT's. ``dense_bn="features"`` normalises the
    Dense output per feature before the reshape (Keras, as in the source); ``"channels"`` per channel
    after it (a BatchNorm2d: far fewer parameters, used by the scaled CPU models).
    """

    def __init__(self, nz, channels, strides, kernel=4, kernel_s1=4, image_size=28, in_channels=1,
                 dense_bn="features", slope=0.2):
        super().__init__()
        if len(strides) != len(channels):
            raise ValueError(f"need one stride per ConvT: {len(channels)} (hidden + output), got {strides}")
        if dense_bn not in ("features", "channels"):
            raise ValueError(f"dense_bn must be 'features' or 'channels', got {dense_bn!r}")
        total = 1
        for s in strides:
            total *= s
        if image_size % total:
            raise ValueError(f"image_size {image_size} is not a multiple of the total stride {total}")
        self.nz = nz
        self.base = image_size // total
        self.channels = list(channels)
        self.slope = slope
        self.dense_bn = dense_bn
        features = channels[0] * self.base * self.base
        self.dense = nn.Linear(nz, features, bias=False)
        self.dense_norm = nn.BatchNorm1d(features) if dense_bn == "features" else nn.BatchNorm2d(channels[0])
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        outs = list(channels[1:]) + [in_channels]
        for i, (c_in, c_out, s) in enumerate(zip(channels, outs, strides)):
            k = kernel_s1 if s == 1 else kernel
            self.convs.append(SameConvTranspose2d(c_in, c_out, k, stride=s, bias=False))
            if i < len(outs) - 1:
                self.norms.append(nn.BatchNorm2d(c_out))

    def forward(self, z, return_features=False):
        h = self.dense(z)
        if self.dense_bn == "features":
            h = self.dense_norm(h).view(-1, self.channels[0], self.base, self.base)
        else:
            h = self.dense_norm(h.view(-1, self.channels[0], self.base, self.base))
        h = F.leaky_relu(h, self.slope)
        features = [h]
        for conv, norm in zip(self.convs[:-1], self.norms):
            h = F.leaky_relu(norm(conv(h)), self.slope)
            features.append(h)
        image = torch.tanh(self.convs[-1](h))
        return (image, features) if return_features else image


def scaled(c, width):
    return max(1, int(round(c * width)))


def dcgan_teacher(nz=100, width=1.0, kernel=4, kernel_s1=4, dense_bn="features", image_size=28, in_channels=1):
    """The source's teacher generator (width 1: 1,961,728 Keras parameters)."""
    return DCGANGenerator(nz, [scaled(c, width) for c in (256, 128, 64)], [1, 2, 2], kernel, kernel_s1,
                          image_size, in_channels, dense_bn)


def dcgan_student(nz=100, width=1.0, kernel=4, dense_bn="features", image_size=28, in_channels=1):
    """The source's student generator (width 1: 784,640 Keras parameters)."""
    return DCGANGenerator(nz, [scaled(c, width) for c in (128, 64)], [2, 2], kernel, kernel, image_size,
                          in_channels, dense_bn)


class Discriminator(nn.Module):
    """Conv(w, k, s2) -> LReLU -> Dropout -> Conv(2w, k, s2) -> LReLU -> Dropout -> Dense 1 (a logit).

    The TensorFlow DCGAN tutorial's discriminator has w = 64, k = 5 (the source's "2 convolutional
    layers + Dense"; its exact widths are unknown); the scaled CPU one has w = 16, k = 4.
    """

    def __init__(self, in_channels=1, image_size=28, width=64, kernel=5, dropout=0.3, slope=0.2):
        super().__init__()
        pad = (kernel - 1) // 2
        self.conv1 = nn.Conv2d(in_channels, width, kernel, stride=2, padding=pad)
        self.conv2 = nn.Conv2d(width, 2 * width, kernel, stride=2, padding=pad)
        self.dropout = nn.Dropout(dropout)
        self.slope = slope
        with torch.no_grad():
            n = self.features(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
        self.fc = nn.Linear(n, 1)

    def features(self, x):
        x = self.dropout(F.leaky_relu(self.conv1(x), self.slope))
        x = self.dropout(F.leaky_relu(self.conv2(x), self.slope))
        return x.flatten(1)

    def forward(self, x):
        return self.fc(self.features(x)).squeeze(1)


def keras_param_count(model):
    """Parameters as Keras ``count_params()`` counts them: all weights plus BatchNorm moving mean
    and variance (PyTorch's ``num_batches_tracked`` has no Keras counterpart)."""
    n = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            n += m.running_mean.numel() + m.running_var.numel()
    return n


def trainable_param_count(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

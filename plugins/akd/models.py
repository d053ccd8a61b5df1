"""Architectures of the AKD source (001) that the built-in zoo does not have.

- ``generator_a``: DFAD's ``GeneratorA`` (VainF/Data-Free-Adversarial-Distillation, network/gan.py),
  which AKD imports but never committed. latent z -> Linear(nz, 2*ngf*(s/4)^2) -> BN ->
  x2 nearest -> conv3x3(2ngf, 2ngf)-BN-LeakyReLU(0.2) -> x2 nearest -> conv3x3(2ngf, ngf)-BN-LeakyReLU(0.2)
  -> conv3x3(ngf, nc) -> Tanh -> BatchNorm2d(nc, affine=False). The last BN standardises every
  generated batch, so its images live in the same (normalised) space as real inputs. With nz=100,
  ngf=64, nc=3 and 32x32 images it has 1,051,139 parameters (DFAD's CIFAR default nz=256: 2,329,091).
- ``resnet34_imagenet``: the source's teacher, torchvision ``resnet34(num_classes=...)`` with its
  ImageNet stem (7x7/2 conv + max-pool), 21,335,972 parameters on CIFAR-100. The source feeds it the
  32x32 generated images bilinearly resized to 224x224 (``align_corners=True``); here the resize is
  part of the model (``input_size``, 0 = none), so the teacher is trained by the cache on the same
  upsampled view it is later distilled from.

The students ``ResNet18_8x`` / ``ResNet18_8x_Small`` are the zoo's CIFAR-style ``resnet18`` with
``width=1.0`` / ``width=0.5`` (11,220,132 / 2,820,740 parameters on CIFAR-100).
"""
import torch.nn as nn
import torch.nn.functional as F


class GeneratorA(nn.Module):
    def __init__(self, nz=100, ngf=64, nc=3, img_size=32):
        super().__init__()
        if img_size % 4:
            raise ValueError(f"GeneratorA needs an image size divisible by 4, got {img_size}")
        self.nz = nz
        self.init_size = img_size // 4
        self.l1 = nn.Sequential(nn.Linear(nz, ngf * 2 * self.init_size**2))
        self.conv_blocks0 = nn.Sequential(nn.BatchNorm2d(ngf * 2))
        self.conv_blocks1 = nn.Sequential(
            nn.Conv2d(ngf * 2, ngf * 2, 3, stride=1, padding=1),
            nn.BatchNorm2d(ngf * 2),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.conv_blocks2 = nn.Sequential(
            nn.Conv2d(ngf * 2, ngf, 3, stride=1, padding=1),
            nn.BatchNorm2d(ngf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ngf, nc, 3, stride=1, padding=1),
            nn.Tanh(),
            nn.BatchNorm2d(nc, affine=False),
        )

    def forward(self, z):
        out = self.l1(z.view(z.shape[0], -1))
        out = out.view(out.shape[0], -1, self.init_size, self.init_size)
        img = self.conv_blocks0(out)
        img = F.interpolate(img, scale_factor=2)
        img = self.conv_blocks1(img)
        img = F.interpolate(img, scale_factor=2)
        return self.conv_blocks2(img)


def generator_a(in_channels: int = 3, image_size: int = 32, nz: int = 100, ngf: int = 64):
    """DFAD's GeneratorA (AKD: nz=100, ngf=64) emitting images shaped like the dataset's."""
    return GeneratorA(nz=nz, ngf=ngf, nc=in_channels, img_size=image_size)


class Upsampled(nn.Module):
    """Resize the input bilinearly (align_corners=True, as the source does) before ``model``."""

    def __init__(self, model, size):
        super().__init__()
        self.model = model
        self.size = size

    def forward(self, x):
        if self.size and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=True)
        return self.model(x)


def resnet34_imagenet(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224):
    """torchvision's ResNet-34 (ImageNet stem), fed ``input_size`` x ``input_size`` upsampled images."""
    from torchvision.models import resnet34

    model = resnet34(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return Upsampled(model, input_size)

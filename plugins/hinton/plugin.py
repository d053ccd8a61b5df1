"""Hinton KD (source 003): the student matches the teacher's temperature-softened outputs and the labels.

    loss = (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T)) + alpha * CE(s, y)

with the source's alpha = 0.2 (so the KL term carries 0.8 * T^2) and T = 5 (the README's second row:
T = 20). The loss is the built-in ``kd`` method's (``kdbench.method.KD``), whose KL goes through
``kdbench.losses.kd_kl_loss`` (batchmean, T^2 included); only the defaults are the source's. Unlike
the source, the teacher runs in eval mode without autograd (``ctx.teacher`` is frozen, under ``no_grad``).
"""
from dataclasses import dataclass

import kdbench
from kdbench.config import check_float
from kdbench.method import KD

from .models import hinton_cnn, vgg19_bn_torchvision


@dataclass
class HintonConfig:
    temperature: float = 5.0  # the source's config default; its README also reports T = 20
    alpha: float = 0.2  # weight of the label loss; the KL term gets (1 - alpha)

    def __post_init__(self):
        check_float(vars(self), "method", "temperature", 0, strict=True)
        check_float(vars(self), "method", "alpha", 0, high=1)


class HintonKD(KD):
    """Knowledge distillation with soft targets (Hinton, Vinyals and Dean, 2015): the built-in
    ``kd`` loss with the source's defaults."""

    Config = HintonConfig


@kdbench.hookimpl
def kdbench_register_methods(register):
    register("hinton", HintonKD, description="Hinton KD: (1 - alpha) T^2 KL(teacher || student) + alpha CE")


@kdbench.hookimpl
def kdbench_register_students(register):
    register("hinton-cnn", hinton_cnn, description="source 003's 3-block CNN student (114,186 params on CIFAR-10)")


@kdbench.hookimpl
def kdbench_register_teachers(register):
    register("vgg19-bn-torchvision", vgg19_bn_torchvision,
             description="torchvision VGG19-BN with one Linear(25,088) head (source 003's teacher)")

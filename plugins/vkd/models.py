"""The conditional GAN of Virtual Knowledge Distillation (source 000): a knowledge generator G(z, y)
that emits a class-probability vector, and a discriminator D(k, y).

As in the notebook (Kim, IEEE Access 2022, re-implemented): the label enters through a learned
``Embedding(num_classes, num_classes)`` (``label_input="embedding"``); the paper's figures
concatenate a one-hot vector instead (``label_input="onehot"``). Both trunks are
``depth`` x [Linear(hidden) -> BatchNorm1d -> ReLU]. With CIFAR-100, nz = 128, hidden = 256 and
depth 3, G has 227,444 and D 194,833 parameters (the notebook's models).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class LabelInput(nn.Module):
    """y -> a num_classes-wide vector: a learned embedding (notebook) or a one-hot (paper)."""

    def __init__(self, num_classes, kind):
        super().__init__()
        if kind not in ("embedding", "onehot"):
            raise ValueError(f"label_input must be 'embedding' or 'onehot', got {kind!r}")
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes, num_classes) if kind == "embedding" else None

    def forward(self, y):
        if self.embedding is not None:
            return self.embedding(y)
        return F.one_hot(y, self.num_classes).float()


def trunk(n_in, hidden, depth):
    layers = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class KnowledgeGenerator(nn.Module):
    """G(z, y) -> a probability vector over the classes (the "virtual softmax")."""

    def __init__(self, num_classes=10, nz=128, hidden=256, depth=3, label_input="embedding"):
        super().__init__()
        self.nz = nz
        self.num_classes = num_classes
        self.label = LabelInput(num_classes, label_input)
        self.body = trunk(nz + num_classes, hidden, depth)
        self.out = nn.Linear(hidden, num_classes)

    def logits(self, z, y):
        """The pre-softmax output l; G's virtual knowledge is softmax(l)."""
        return self.out(self.body(torch.cat([z, self.label(y)], dim=1)))

    def forward(self, z, y):
        return F.softmax(self.logits(z, y), dim=1)

    def noise(self, y, generator=None):
        return torch.randn(len(y), self.nz, device=y.device, generator=generator)

    def sample(self, y, generator=None):
        """The virtual knowledge for labels ``y`` with fresh noise z ~ N(0, I)."""
        return self(self.noise(y, generator), y)

    def sample_logits(self, y, generator=None):
        return self.logits(self.noise(y, generator), y)


class KnowledgeDiscriminator(nn.Module):
    """D(k, y) -> the logit that the probability vector k is the teacher's for label y.

    The notebook ends with a Sigmoid and uses BCELoss; this returns the logit and the methods use
    BCE-with-logits, the same loss computed stably.
    """

    def __init__(self, num_classes=10, hidden=256, depth=3, label_input="embedding"):
        super().__init__()
        self.label = LabelInput(num_classes, label_input)
        self.body = trunk(2 * num_classes, hidden, depth)
        self.out = nn.Linear(hidden, 1)

    def forward(self, k, y):
        return self.out(self.body(torch.cat([k, self.label(y)], dim=1))).squeeze(1)


def param_count(model):
    return sum(p.numel() for p in model.parameters())

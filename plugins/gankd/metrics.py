"""Generator metrics (source 002 defines none): Frechet distance in a small classifier's feature
space, class coverage, and pixel MSE to the teacher for the same noise.

The Frechet distance is FID's formula, ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)),
computed on the penultimate-layer features of a classifier trained on the same dataset (the input
of its last ``nn.Linear``), not on Inception features: numbers are comparable within one
classifier only, which the harness guarantees by caching that classifier like a teacher.
"""
import math

import torch
import torch.nn as nn


class PenultimateFeatures:
    """Calls a classifier and returns (logits, the input of its last nn.Linear)."""

    def __init__(self, classifier):
        linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{type(classifier).__name__} has no nn.Linear layer to take features from")
        self.classifier = classifier
        self.head = linears[-1]

    @torch.no_grad()
    def __call__(self, x, batch_size=500):
        captured = []
        handle = self.head.register_forward_pre_hook(lambda module, args: captured.append(args[0].flatten(1)))
        was_training = self.classifier.training
        self.classifier.eval()
        try:
            logits = torch.cat([self.classifier(x[i: i + batch_size]).float() for i in range(0, len(x), batch_size)])
        finally:
            handle.remove()
            self.classifier.train(was_training)
        return logits, torch.cat(captured).double()


def gaussian_stats(features):
    """Mean and covariance (float64) of features [N, D]."""
    features = features.double()
    return features.mean(0), torch.cov(features.T)


def frechet_distance(stats_a, stats_b):
    """Frechet distance between two Gaussians given as (mean, covariance)."""
    mu_a, cov_a = stats_a
    mu_b, cov_b = stats_b
    evals, evecs = torch.linalg.eigh(cov_a)
    root_a = evecs @ torch.diag(evals.clamp_min(0).sqrt()) @ evecs.T
    middle = root_a @ cov_b @ root_a  # symmetric PSD, same spectrum as cov_a @ cov_b
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return float(((mu_a - mu_b) ** 2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root)


def class_coverage(logits):
    """Entropy of the histogram of predicted classes over log(num_classes): 1 when samples spread
    evenly over the classes, 0 when they all fall in one (mode collapse)."""
    num_classes = logits.shape[1]
    counts = torch.bincount(logits.argmax(1), minlength=num_classes).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(entropy / math.log(num_classes))

"""Loader of the compiled kdbench loss ops (``torch.ops.kdbench.*``).

Importing this package never fails: when the compiled library ``kdbench_ext._C`` is
missing or cannot be loaded (not built, built against another torch), :func:`available`
is False and :func:`load_error` says why; :mod:`kdbench.losses` then uses its PyTorch
reference.  When it loads, the C++ library registers the ops (schemas, CPU and CUDA
kernels, autograd) and this module adds their fake kernels, so the ops also trace under
``torch.compile``.

Ops (``torch.ops.kdbench``):

- ``kd_kl_loss(student, teacher, temperature, reduction) -> loss`` and
  ``feature_mse(x, y) -> loss``: differentiable; what :mod:`kdbench.losses` calls.
- ``kd_kl_fwd(student, teacher, temperature, reduction, compute_grad) -> (loss, grad)``
  and ``mse_fwd(x, y, compute_grad) -> (loss, grad)``: the fused kernels, which write
  the gradient in the same pass as the loss.
- ``linear_divergence(hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias,
  teacher_logits, mask, divergence, param, temperature, chunk_size) -> loss``: the output
  layer and a divergence in one chunked op (differentiable in hidden, weight, bias);
  ``linear_divergence_fwd(..., grad_mask) -> (loss, grad_hidden, grad_weight, grad_bias)``
  its kernel.  Divergence codes: :data:`DIVERGENCES`.
- ``_has_cuda()``, ``_cpu_isa()``, ``_set_cpu_isa(name)``: build and dispatch details.

``reduction`` codes: 0 none, 1 batchmean, 2 sum (see :data:`REDUCTIONS`).
"""
from __future__ import annotations

import torch

REDUCTIONS = {"none": 0, "batchmean": 1, "sum": 2}
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "total_variation")

_error: BaseException | None = None
try:
    from . import _C  # noqa: F401  (loading the library registers the ops)
except (ImportError, OSError) as exc:  # not built, or built for another torch
    _error = exc
    from importlib.machinery import EXTENSION_SUFFIXES
    from pathlib import Path

    if not any((Path(__file__).parent / f"_C{suffix}").exists() for suffix in EXTENSION_SUFFIXES):
        _error = ImportError("kdbench_ext._C was not built (installed without a working C++ compiler?)")


def available() -> bool:
    """True when the compiled ops are loaded."""
    return _error is None


def load_error() -> BaseException | None:
    """Why the compiled ops are not loaded (None when they are)."""
    return _error


def has_cuda() -> bool:
    """True when the library was built with its CUDA kernels."""
    return available() and bool(torch.ops.kdbench._has_cuda())


def cpu_isa() -> str | None:
    """The CPU kernels in use: "default", "avx2" or "avx512" (None without the library)."""
    return str(torch.ops.kdbench._cpu_isa()) if available() else None


def set_cpu_isa(name: str) -> str:
    """Select the CPU kernels ("default", "avx2", "avx512" or "auto"); returns the previous.

    Only ISAs that this CPU (as ``torch.backends.cpu.get_cpu_capability()`` reports)
    supports can be chosen.  Meant for tests and benchmarks.
    """
    if not available():
        raise RuntimeError(f"kdbench_ext is not loaded: {_error}")
    return str(torch.ops.kdbench._set_cpu_isa(name))


def _register_fakes() -> None:
    @torch.library.register_fake("kdbench::kd_kl_fwd")
    def _kd_kl_fwd_fake(student, teacher, temperature, reduction, compute_grad):
        torch._check(student.shape == teacher.shape, lambda: "student/teacher shapes differ")
        torch._check(student.dim() >= 1, lambda: "logits need a class dimension")
        loss_shape = student.shape[:-1] if reduction == REDUCTIONS["none"] else ()
        loss = student.new_empty(loss_shape)
        grad = student.new_empty(student.shape) if compute_grad else student.new_empty((0,))
        return loss, grad

    @torch.library.register_fake("kdbench::mse_fwd")
    def _mse_fwd_fake(x, y, compute_grad):
        torch._check(x.shape == y.shape, lambda: "input shapes differ")
        grad = x.new_empty(x.shape) if compute_grad else x.new_empty((0,))
        return x.new_empty(()), grad

    if not hasattr(torch.ops.kdbench, "linear_divergence_fwd"):
        return  # a library built before the op existed: kdbench.losses uses its reference for it

    @torch.library.register_fake("kdbench::linear_divergence_fwd")
    def _linear_divergence_fwd_fake(hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias,
                                    teacher_logits, mask, divergence, param, temperature, chunk_size,
                                    grad_mask):
        torch._check(hidden.dim() == 2 and weight.dim() == 2, lambda: "hidden/weight must be 2-D")
        torch._check(hidden.shape[1] == weight.shape[1], lambda: "hidden/weight sizes differ")
        grad_h = hidden.new_empty(hidden.shape) if grad_mask[0] else hidden.new_empty((0,))
        grad_w = weight.new_empty(weight.shape) if grad_mask[1] else weight.new_empty((0,))
        grad_b = weight.new_empty(bias.shape) if grad_mask[2] and bias is not None else weight.new_empty((0,))
        return hidden.new_empty(()), grad_h, grad_w, grad_b


if _error is None:
    _register_fakes()

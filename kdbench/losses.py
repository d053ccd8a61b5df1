"""Distillation losses: the one door to the fused kernels of :mod:`kdbench_ext`.

Method plugins call :func:`kd_kl_loss` and :func:`feature_mse`.  Each call runs the
compiled op (``torch.ops.kdbench.*``: C++ on the CPU, CUDA on the GPU) when the extension
is loaded and supports the tensors' device and dtype, and the pure-PyTorch reference
(:func:`kd_kl_loss_reference`, :func:`feature_mse_reference`) otherwise.  The reference
defines what is correct; the tests hold the fused ops to it.

- ``KDBENCH_EXT=0`` in the environment (read at import) forces the reference.
- :func:`backend` says which one a call on a given device and dtype uses;
  :func:`extension_status` says why; :func:`reference_only` forces the reference
  within a block.
- Importing this module never fails because the extension is absent.

The fused KL op differentiates the student logits only.  A call whose teacher logits
require grad (with grad mode on), or whose temperature is a tensor, takes the reference,
which differentiates everything.  The fused ops do not support double backward
(``create_graph=True``); they raise a clear error there.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys

import torch
import torch.nn.functional as F

__all__ = [
    "REDUCTIONS",
    "backend",
    "reference_only",
    "extension_status",
    "feature_mse",
    "feature_mse_reference",
    "kd_kl_loss",
    "kd_kl_loss_reference",
    "standardize_logits",
]

REDUCTIONS = ("batchmean", "sum", "none")
_REDUCTION_CODES = {"none": 0, "batchmean": 1, "sum": 2}
_FUSED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_ENABLED = os.environ.get("KDBENCH_EXT", "1").strip().lower() not in ("0", "false", "no", "off")

# Filled on first use by _init(): the device types the fused ops serve (empty when the
# extension is disabled or absent), the op handles, and a status for extension_status().
_DEVICES: tuple | None = None
_FORCED_REFERENCE = 0  # depth of reference_only() blocks
_KL_OP = None
_MSE_OP = None
_STATUS: dict = {}


@torch.compiler.assume_constant_result  # under torch.compile: run once, eagerly
def _init() -> tuple:
    global _DEVICES, _KL_OP, _MSE_OP, _STATUS
    status = {"enabled": _ENABLED, "loaded": False, "cuda": False, "cpu_isa": None, "error": None}
    devices: tuple = ()
    if not _ENABLED:
        status["error"] = "disabled by KDBENCH_EXT=0"
    else:
        try:
            import kdbench_ext
        except Exception as exc:  # the package itself is missing or broken
            status["error"] = f"cannot import kdbench_ext: {exc!r}"
        else:
            if kdbench_ext.available():
                _KL_OP = torch.ops.kdbench.kd_kl_loss.default
                _MSE_OP = torch.ops.kdbench.feature_mse.default
                status.update(loaded=True, cuda=kdbench_ext.has_cuda(), cpu_isa=kdbench_ext.cpu_isa())
                devices = ("cpu", "cuda") if status["cuda"] else ("cpu",)
            else:
                status["error"] = f"kdbench_ext._C not loaded: {kdbench_ext.load_error()!r}"
                reason = (str(kdbench_ext.load_error()).splitlines() or ["not built"])[0]
                print(f"kdbench: NOTICE: the compiled loss op is not available ({reason}); "
                      "using the PyTorch reference losses", file=sys.stderr)
    _STATUS = status
    _DEVICES = devices
    return devices


def _fused_devices() -> tuple:
    if _FORCED_REFERENCE:
        return ()
    devices = _DEVICES
    if devices is None:
        devices = _init()
    return devices


@contextlib.contextmanager
def reference_only():
    """Within the block, every call uses the PyTorch reference (what ``KDBENCH_EXT=0`` does
    for a whole process); for comparisons and debugging."""
    global _FORCED_REFERENCE
    _FORCED_REFERENCE += 1
    try:
        yield
    finally:
        _FORCED_REFERENCE -= 1


def _fused_ok(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.device.type in _fused_devices()
        and a.dtype in _FUSED_DTYPES
        and a.layout == torch.strided
        and a.numel() > 0
        and a.device == b.device
    )


def backend(device="cpu", dtype=torch.float32) -> str:
    """``"fused"`` when the compiled ops serve tensors of this device and dtype, else ``"reference"``."""
    dev = torch.device(device).type
    return "fused" if dev in _fused_devices() and dtype in _FUSED_DTYPES else "reference"


def extension_status() -> dict:
    """What :func:`backend` is based on: enabled, loaded, cuda, cpu_isa, error (why not loaded)."""
    _fused_devices()
    status = dict(_STATUS)
    if status.get("loaded"):
        status["cpu_isa"] = str(torch.ops.kdbench._cpu_isa())
    return status


def _common_dtype(a: torch.Tensor, b: torch.Tensor):
    if a.dtype != b.dtype:
        dt = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(dt), b.to(dt)
    return a, b


def kd_kl_loss(student_logits, teacher_logits, temperature, reduction="batchmean"):
    """Temperature-scaled KL distillation loss (Hinton et al.).

    ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` per row of the last
    dimension; inputs ``[B, C]`` or ``[..., C]`` (rows = all leading dimensions).
    ``reduction``: ``"batchmean"`` (sum over rows / number of rows), ``"sum"``, or
    ``"none"`` (one value per row, shaped like the leading dimensions).  The gradient
    with respect to the student is ``T * (softmax(s/T) - softmax(t/T)) / rows`` for
    batchmean.  The result has the student's dtype; internally fp32 (fp64 for fp64).
    """
    code = _REDUCTION_CODES.get(reduction)
    if code is None:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    s, t = student_logits, teacher_logits
    if s.shape != t.shape:
        raise ValueError(f"student and teacher logits differ in shape: {tuple(s.shape)} vs {tuple(t.shape)}")
    if s.dim() == 0 or s.shape[-1] == 0:
        raise ValueError(f"logits need a non-empty class dimension, got shape {tuple(s.shape)}")
    s, t = _common_dtype(s, t)
    if isinstance(temperature, torch.Tensor):
        return kd_kl_loss_reference(s, t, temperature, reduction)
    T = float(temperature)
    if not (T > 0 and math.isfinite(T)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if _fused_ok(s, t) and not (t.requires_grad and torch.is_grad_enabled()):
        return _KL_OP(s, t, T, code)
    return kd_kl_loss_reference(s, t, T, reduction)


def feature_mse(x, y):
    """``mean((x - y)^2)`` over all elements, with gradients for whichever inputs need them."""
    if x.shape != y.shape:
        return feature_mse_reference(x, y)
    x, y = _common_dtype(x, y)
    if _fused_ok(x, y):
        return _MSE_OP(x, y)
    return feature_mse_reference(x, y)


def kd_kl_loss_reference(student_logits, teacher_logits, temperature, reduction="batchmean"):
    """Pure-PyTorch :func:`kd_kl_loss`: the definition the fused op is tested against."""
    s, t = student_logits, teacher_logits
    C = s.shape[-1]
    work = torch.float64 if s.dtype == torch.float64 else torch.float32
    log_ps = F.log_softmax(s.reshape(-1, C).to(work) / temperature, dim=-1)
    log_pt = F.log_softmax(t.reshape(-1, C).to(work) / temperature, dim=-1)
    # A class with p_t == 0 (e.g. -inf in both rows) contributes 0, not 0 * (-inf - -inf).
    diff = torch.where(torch.isneginf(log_pt), torch.zeros_like(log_pt), log_pt - log_ps)
    rows = (log_pt.exp() * diff).sum(-1) * (temperature * temperature)
    if reduction == "none":
        out = rows.reshape(s.shape[:-1])
    elif reduction == "sum":
        out = rows.sum()
    else:
        out = rows.sum() / rows.shape[0]
    return out.to(s.dtype)


def standardize_logits(logits, eps=1e-7):
    """Logit standardisation (Sun et al., CVPR 2024): each row's z-score, ``(z - mean) / (eps +
    std)`` over the last dimension, so that a distillation loss compares the shapes of the
    teacher's and the student's logits rather than their scales. ``std`` is the unbiased one and
    ``eps`` is added to it, as in the reference code (sunshangquan/logit-standardization-KD,
    ``normalize``); the paper writes the population std. Computed in at least float32. The one
    implementation behind the ``logit_stand`` option of ``kd`` and of the plugin methods that
    offer it."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return (z - z.mean(-1, keepdim=True)) / (eps + z.std(-1, keepdim=True))


def feature_mse_reference(x, y):
    """Pure-PyTorch :func:`feature_mse` (fp32 internally for 16-bit inputs)."""
    if x.dtype in (torch.bfloat16, torch.float16):
        return F.mse_loss(x.float(), y.float()).to(x.dtype)
    return F.mse_loss(x, y)

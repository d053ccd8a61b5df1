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

:func:`linear_divergence` is the language-model form: the student's output layer and a
divergence in one chunked op (forward KL, reverse KL, generalized JSD, DistiLLM's skew KLs,
total variation), so that the ``[rows, vocabulary]`` logit matrices are never held whole;
:func:`linear_divergence_reference` materialises them.  A method that has its student's
features and head calls ``linear_divergence(features, head.weight, head.bias, ...)`` instead of
``head(features)`` followed by a loss on the logits.

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
    "DIVERGENCES",
    "REDUCTIONS",
    "backend",
    "reference_only",
    "extension_status",
    "feature_mse",
    "feature_mse_reference",
    "kd_kl_loss",
    "kd_kl_loss_reference",
    "linear_divergence",
    "linear_divergence_reference",
    "standardize_logits",
]

REDUCTIONS = ("batchmean", "sum", "none")
# The divergences of linear_divergence, in the order of the op's codes (kdbench_ext/csrc/kd_loss.h).
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "total_variation")
_REDUCTION_CODES = {"none": 0, "batchmean": 1, "sum": 2}
_FUSED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_ENABLED = os.environ.get("KDBENCH_EXT", "1").strip().lower() not in ("0", "false", "no", "off")

# Filled on first use by _init(): the device types the fused ops serve (empty when the
# extension is disabled or absent), the op handles, and a status for extension_status().
_DEVICES: tuple | None = None
_FORCED_REFERENCE = 0  # depth of reference_only() blocks
_KL_OP = None
_MSE_OP = None
_LINEAR_DIV_OP = None
_STATUS: dict = {}


@torch.compiler.assume_constant_result  # under torch.compile: run once, eagerly
def _init() -> tuple:
    global _DEVICES, _KL_OP, _MSE_OP, _LINEAR_DIV_OP, _STATUS
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
                # None from a library built before the op existed (rebuild it): the reference then
                _LINEAR_DIV_OP = getattr(torch.ops.kdbench, "linear_divergence", None)
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


def _check_linear_divergence(hidden, weight, bias, teacher_logits, teacher_hidden, teacher_weight, teacher_bias,
                             divergence, beta, skew, temperature, mask, chunk_size):
    """The arguments of :func:`linear_divergence`, checked once for both paths; returns the
    (vocabulary, op parameter)."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if hidden.dim() < 1 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden [..., H] and weight [V, H] do not fit: {tuple(hidden.shape)} and {tuple(weight.shape)}")
    V = weight.shape[0]
    if V == 0:
        raise ValueError("the vocabulary (weight.shape[0]) is empty")
    if bias is not None and tuple(bias.shape) != (V,):
        raise ValueError(f"bias must be [{V}], got {tuple(bias.shape)}")
    lead = tuple(hidden.shape[:-1])
    if (teacher_logits is None) == (teacher_hidden is None and teacher_weight is None):
        raise ValueError("give the teacher either as teacher_logits or as teacher_hidden + teacher_weight")
    if teacher_logits is not None:
        if teacher_bias is not None:
            raise ValueError("teacher_bias goes with teacher_weight, not with teacher_logits")
        if tuple(teacher_logits.shape) != lead + (V,):
            raise ValueError(f"teacher_logits must be {lead + (V,)}, got {tuple(teacher_logits.shape)}")
    else:
        if teacher_hidden is None or teacher_weight is None:
            raise ValueError("the teacher needs both teacher_hidden and teacher_weight")
        if (teacher_weight.dim() != 2 or teacher_weight.shape[0] != V
                or tuple(teacher_hidden.shape) != lead + (teacher_weight.shape[1],)):
            raise ValueError(f"teacher_hidden {tuple(teacher_hidden.shape)} and teacher_weight "
                             f"{tuple(teacher_weight.shape)} do not fit {lead} rows and a vocabulary of {V}")
        if teacher_bias is not None and tuple(teacher_bias.shape) != (V,):
            raise ValueError(f"teacher_bias must be [{V}], got {tuple(teacher_bias.shape)}")
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != lead):
        raise ValueError(f"mask must be a bool tensor of shape {lead} (True: the row counts), "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    if not isinstance(temperature, torch.Tensor):
        T = float(temperature)
        if not (T > 0 and math.isfinite(T)):
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if divergence == "jsd" and not 0 < beta < 1:
        raise ValueError(f"jsd needs 0 < beta < 1 (beta -> 0 and 1 are the forward and reverse KL "
                         f"up to scale: use those), got {beta!r}")
    if divergence.startswith("skew") and not 0 <= skew < 1:
        raise ValueError(f"the skew KLs need 0 <= skew < 1, got {skew!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None (chosen from the shapes), got {chunk_size!r}")
    return V, (beta if divergence == "jsd" else skew if divergence.startswith("skew") else 0.0)


def linear_divergence(hidden, weight, bias=None, *, teacher_logits=None, teacher_hidden=None, teacher_weight=None,
                      teacher_bias=None, divergence="forward_kl", beta=0.5, skew=0.1, temperature=1.0, mask=None,
                      chunk_size=None):
    """The student's output layer and a distillation divergence in one chunked op.

    The student's logits are ``hidden @ weight.T + bias`` (``hidden`` ``[..., H]``, ``weight``
    ``[V, H]``, ``bias`` ``[V]`` or None); the teacher's are ``teacher_logits`` ``[..., V]``, or
    ``teacher_hidden @ teacher_weight.T + teacher_bias`` (its own hidden size; never
    differentiated).  With ``q = softmax(student / T)`` and ``p = softmax(teacher / T)`` per row,
    ``divergence`` is one of :data:`DIVERGENCES`:

    - ``"forward_kl"``: KL(p || q);  ``"reverse_kl"``: KL(q || p)
    - ``"jsd"``: generalized JSD (GKD), ``beta KL(p || m) + (1 - beta) KL(q || m)`` with
      ``m = beta p + (1 - beta) q``, ``0 < beta < 1``
    - ``"skew_forward_kl"``: KL(p || skew p + (1 - skew) q);  ``"skew_reverse_kl"``:
      KL(q || skew q + (1 - skew) p) (DistiLLM, ``skew`` = their lambda = 0.1); the true KL, which
      differs from DistiLLM's code by the teacher's (or, reversed, no) entropy term: the same
      gradient
    - ``"total_variation"``: ``sum |p - q| / 2``

    Returns the mean over the rows where ``mask`` (bool, shaped like ``hidden[..., 0]``) is True
    (all rows without a mask): 0 when no row counts.  No T^2 factor (multiply for Hinton's
    scaling).  The result has ``hidden``'s dtype; the softmax sweep runs in fp32 (fp64 for fp64).
    Under autocast the three matmuls run in the autocast dtype, as ``F.linear`` would.

    ``chunk_size``: rows per chunk (None: chosen from the vocabulary, about 2^24 logits per
    chunk, a power of two from 16 to 4096 rows; see kdbench_ext/csrc/linear_divergence.cpp).
    The fused op holds one chunk of logits at a time and computes the gradients of ``hidden``,
    ``weight`` and ``bias`` in the forward; it takes the reference (which materialises the
    logits) when the extension is not loaded, a teacher tensor requires grad, or the
    temperature is a tensor.
    """
    V, param = _check_linear_divergence(hidden, weight, bias, teacher_logits, teacher_hidden, teacher_weight,
                                        teacher_bias, divergence, beta, skew, temperature, mask, chunk_size)
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        dt = torch.get_autocast_dtype(device)
        hidden, weight, teacher_hidden, teacher_weight = (
            None if x is None else x.to(dt) for x in (hidden, weight, teacher_hidden, teacher_weight))
        bias, teacher_bias = (None if x is None else x.to(dt) for x in (bias, teacher_bias))
    kwargs = dict(teacher_logits=teacher_logits, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight,
                  teacher_bias=teacher_bias, divergence=divergence, beta=beta, skew=skew,
                  temperature=temperature, mask=mask)
    teacher = [x for x in (teacher_logits, teacher_hidden, teacher_weight, teacher_bias) if x is not None]
    student = [x for x in (weight, bias) if x is not None]
    fused = (
        not isinstance(temperature, torch.Tensor)
        and _fused_ok(hidden, weight)
        and _LINEAR_DIV_OP is not None
        and all(x.dtype == hidden.dtype and x.device == hidden.device for x in student)
        and all(x.dtype in _FUSED_DTYPES and x.device == hidden.device and x.layout == torch.strided for x in teacher)
        and not (torch.is_grad_enabled() and any(x.requires_grad for x in teacher))
        and (mask is None or mask.device == hidden.device)
    )
    if not fused:
        return linear_divergence_reference(hidden, weight, bias, **kwargs)
    return _LINEAR_DIV_OP(
        hidden.reshape(-1, hidden.shape[-1]), weight, bias,
        None if teacher_hidden is None else teacher_hidden.reshape(-1, teacher_hidden.shape[-1]),
        teacher_weight, teacher_bias,
        None if teacher_logits is None else teacher_logits.reshape(-1, V),
        None if mask is None else mask.reshape(-1),
        DIVERGENCES.index(divergence), float(param), float(temperature), chunk_size or 0,
    )


def _log_mix(log_a, log_b, weight_a):
    """log(weight_a * exp(log_a) + (1 - weight_a) * exp(log_b)), stable (-inf where both are -inf)."""
    if weight_a == 0:
        return log_b
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def _xlogy_diff(p, log_p, log_r):
    """p * (log_p - log_r) per class, 0 where p == 0 (never 0 * inf)."""
    return torch.where(p > 0, p * (log_p - log_r), torch.zeros_like(p))


def linear_divergence_reference(hidden, weight, bias=None, *, teacher_logits=None, teacher_hidden=None,
                                teacher_weight=None, teacher_bias=None, divergence="forward_kl", beta=0.5, skew=0.1,
                                temperature=1.0, mask=None, chunk_size=None):
    """Pure-PyTorch :func:`linear_divergence`: the logits materialised whole, each divergence
    written from its formula; the definition the fused op is tested against.  ``chunk_size`` is
    accepted and ignored."""
    V, _ = _check_linear_divergence(hidden, weight, bias, teacher_logits, teacher_hidden, teacher_weight,
                                    teacher_bias, divergence, beta, skew, temperature, mask, chunk_size)
    s = F.linear(hidden, weight, bias).reshape(-1, V)
    if teacher_logits is not None:
        t = teacher_logits.reshape(-1, V)
    else:
        t = F.linear(teacher_hidden, teacher_weight, teacher_bias).reshape(-1, V)
    if mask is not None:
        keep = mask.reshape(-1)
        s, t = s[keep], t[keep]
    work = torch.float64 if torch.float64 in (s.dtype, t.dtype) else torch.float32
    log_q = F.log_softmax(s.to(work) / temperature, dim=-1)
    log_p = F.log_softmax(t.to(work) / temperature, dim=-1)
    q, p = log_q.exp(), log_p.exp()
    if divergence == "forward_kl":
        rows = _xlogy_diff(p, log_p, log_q)
    elif divergence == "reverse_kl":
        rows = _xlogy_diff(q, log_q, log_p)
    elif divergence == "jsd":
        log_m = _log_mix(log_p, log_q, beta)
        rows = beta * _xlogy_diff(p, log_p, log_m) + (1 - beta) * _xlogy_diff(q, log_q, log_m)
    elif divergence == "skew_forward_kl":
        rows = _xlogy_diff(p, log_p, _log_mix(log_p, log_q, skew))
    elif divergence == "skew_reverse_kl":
        rows = _xlogy_diff(q, log_q, _log_mix(log_q, log_p, skew))
    else:  # total_variation
        rows = 0.5 * (p - q).abs()
    loss = rows.sum() / max(rows.shape[0], 1)
    return loss.to(hidden.dtype)

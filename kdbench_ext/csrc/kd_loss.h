// Shared host-side helpers of the kdbench fused-loss ops (CPU and CUDA).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

namespace kdbench {

// Reduction codes of the `reduction` argument of kd_kl_fwd / kd_kl_loss.
enum Reduction : int64_t { kNone = 0, kBatchMean = 1, kSum = 2 };

// Validates the arguments of the KL ops; `op` names the op in messages.
void check_kl_args(const at::Tensor& s, const at::Tensor& t, double temperature,
                   int64_t reduction, const char* op);
void check_mse_args(const at::Tensor& x, const at::Tensor& y, const char* op);

// x viewed as [rows, cols] with unit stride along cols (copies only if needed).
at::Tensor as_rows(const at::Tensor& x, int64_t rows, int64_t cols);

// A contiguous, uninitialised tensor shaped like `like`, for a saved gradient.
// CPU buffers of 32 MiB or more, which malloc would map fresh from the kernel on
// every call, come from a small pool backed by transparent huge pages (Linux;
// see GradBufferPool in kd_loss.cpp, KDBENCH_EXT_CPU_CACHE_MB bounds it).
at::Tensor alloc_grad(const at::Tensor& like);

// From per-row KL values (any float dtype, on the inputs' device) to the loss:
// T^2 * rows, then the reduction, in the dtype of `s`.
at::Tensor finalize_kl(const at::Tensor& row_kl, double temperature, int64_t reduction,
                       const at::Tensor& s);

// Divergence codes of linear_divergence_fwd (kdbench.losses.DIVERGENCES, in order).
enum Divergence : int64_t {
  kForwardKl = 0,       // KL(p || q), p the teacher's softmax(t / T), q the student's
  kReverseKl = 1,       // KL(q || p)
  kJsd = 2,             // beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q
  kSkewForwardKl = 3,   // KL(p || lambda p + (1 - lambda) q)      (DistiLLM)
  kSkewReverseKl = 4,   // KL(q || lambda q + (1 - lambda) p)      (DistiLLM)
  kTotalVariation = 5,  // sum |p - q| / 2
  kNumDivergences = 6
};

// The per-device part of linear_divergence_fwd: one chunk of logits.
//   zs: [rows, C] contiguous student logits; when want_grad, overwritten with
//       gscale * d loss_row / d (zs / T);
//   zt: [rows, C] teacher logits, same dtype, unit stride along C;
//   row_loss: [rows], fp64 on the CPU (fp32, fp64 for fp64, on CUDA).
struct DivParams {
  int64_t kind;
  double param;  // beta (jsd) or lambda (skew KLs)
  double inv_t;
  double gscale;
};
using DivRowPass = void (*)(const at::Tensor& zs, const at::Tensor& zt, const at::Tensor& row_loss,
                            const DivParams& p, bool want_grad);

// The CPU pass (vectorised kernels of the active ISA, rows over threads).
void div_rows_cpu(const at::Tensor& zs, const at::Tensor& zt, const at::Tensor& row_loss,
                  const DivParams& p, bool want_grad);

// linear_divergence_fwd on any device: the chunk loop (matmuls through ATen),
// with `pass` for the softmax/divergence sweep of each chunk.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_divergence_fwd_impl(
    const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& teacher_hidden, const c10::optional<at::Tensor>& teacher_weight,
    const c10::optional<at::Tensor>& teacher_bias, const c10::optional<at::Tensor>& teacher_logits,
    const c10::optional<at::Tensor>& mask, int64_t divergence, double param, double temperature,
    int64_t chunk_size, std::array<bool, 3> grad_mask, DivRowPass pass);

}  // namespace kdbench

// Shared host-side helpers of the kdbench fused-loss ops (CPU and CUDA).
#pragma once

#include <ATen/ATen.h>

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

}  // namespace kdbench

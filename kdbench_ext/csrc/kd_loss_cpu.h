// Interface between the op layer (kd_loss.cpp) and the vectorised CPU kernels.
//
// The kernels are compiled three times, once per instruction set (DEFAULT, AVX2,
// AVX512), from kd_loss_cpu_kernels.h; kd_loss.cpp picks one at run time from
// at::get_cpu_capability(), the same choice ATen makes for its own kernels.
// Only plain types cross this boundary (no at::Tensor), so the ISA-specific
// translation units stay small and free of static initialisers.
#pragma once

#include <cstdint>

namespace kdbench {
namespace cpu {

// Index of a dtype in the kernel tables.
enum DTypeIndex : int { kF32 = 0, kF64 = 1, kBF16 = 2, kF16 = 3, kNumDTypes = 4 };

// One KL call: rows of C logits, each row `lds` / `ldt` elements apart, the last
// dimension contiguous.  `grad` (nullable) is a contiguous [rows, C] buffer.
struct KlArgs {
  const void* s;
  const void* t;
  void* grad;          // gscale * (softmax(s/T) - softmax(t/T)), or nullptr
  double* row_kl;      // KL(p_t || p_s) per row (no T^2 factor)
  int64_t lds;
  int64_t ldt;
  int64_t C;
  double inv_t;        // 1 / temperature
  double gscale;       // T * (1/rows for batchmean)
};

// One MSE call over n contiguous elements.
struct MseArgs {
  const void* x;
  const void* y;
  void* grad;          // gscale * (x - y), or nullptr
  int64_t n;
  double gscale;       // 2 / n
};

// One divergence call of linear_divergence_fwd (see kdbench::Divergence in
// kd_loss.h): rows of C logits; `s` is contiguous ([rows, C]) and, when
// `want_grad`, is overwritten row by row with gscale * d loss_row / d (s / T).
struct DivArgs {
  void* s;
  const void* t;
  double* row_loss;    // the row's divergence (no temperature factor)
  int64_t ldt;
  int64_t C;
  int64_t kind;        // a kdbench::Divergence code
  double param;        // beta (jsd) or lambda (skew KLs)
  double inv_t;
  double gscale;
  bool want_grad;
};

// Processes rows [begin, end).
using DivRowsFn = void (*)(const DivArgs&, int64_t begin, int64_t end);
// Processes rows [begin, end).
using KlRowsFn = void (*)(const KlArgs&, int64_t begin, int64_t end);
// Processes elements [begin, end); returns sum((x - y)^2) over them.
using MseRangeFn = double (*)(const MseArgs&, int64_t begin, int64_t end);

struct IsaKernels {
  KlRowsFn kl[kNumDTypes];
  MseRangeFn mse[kNumDTypes];
  DivRowsFn div[kNumDTypes];
};

// Each returns false (and leaves `out` alone) when its ISA was not compiled in.
namespace isa_default { bool get_kernels(IsaKernels* out); }
namespace isa_avx2 { bool get_kernels(IsaKernels* out); }
namespace isa_avx512 { bool get_kernels(IsaKernels* out); }

}  // namespace cpu
}  // namespace kdbench

// CUDA kernels of the kdbench fused losses (kd_kl_fwd, mse_fwd).
//
// Temperature KL: one warp per row when C <= 1024, one block per row otherwise.
// Sweep 1: each thread folds its elements (16-byte vector loads when the rows
// allow it) into an online state (max, sum) for both rows plus
// D = sum e_t * (arg_t - arg_s), all relative to the state's own maxes, with
// arg = (x - max) / T and e = exp(arg); the states are merged across the warp
// (shuffles) and the block (shared memory).  KL = D / Z_t + log(Z_s / Z_t).
// Sweep 2 (when a gradient is wanted) rereads the row, mostly from L2, and
// writes grad = gscale * (p_s - p_t) in the input dtype.  Sums run in fp32
// (fp64 for fp64 inputs).  Products and sums whose exactness matters
// (identical rows must give exactly zero) use the explicitly rounded
// intrinsics, which the compiler never contracts into FMAs.
//
// The backward (grad_output * saved gradient) is ATen arithmetic on the device,
// in kd_loss.cpp; nothing here synchronises with the host.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kd_loss.h"

namespace kdbench {
namespace {

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }
__device__ __forceinline__ float max_acc(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_acc(double a, double b) { return fmax(a, b); }

template <typename A>
__device__ __forceinline__ A neg_inf() {
  return static_cast<A>(-INFINITY);
}

template <typename T>
__device__ __forceinline__ typename AccOf<T>::type to_acc(T v) {
  return static_cast<typename AccOf<T>::type>(v);
}

// 16 bytes of T, loaded and stored as one vector.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

inline bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// ---------------------------------------------------------------------------
// Online softmax statistics of one (s, t) row pair
// ---------------------------------------------------------------------------

template <typename A>
struct KlState {
  A ms, zs;     // student: running max of the raw logits, sum exp((x - ms) / T)
  A mt, zt, d;  // teacher: the same, and D = sum e_t * (arg_t - arg_s)
};

template <typename A>
__device__ __forceinline__ KlState<A> kl_identity() {
  KlState<A> st;
  st.ms = neg_inf<A>();
  st.zs = A(0);
  st.mt = neg_inf<A>();
  st.zt = A(0);
  st.d = A(0);
  return st;
}

// Raises the state's maxes to at least (cs, ct), rescaling Z_s, Z_t and D.
// A state whose row is all -inf so far has Z = 0 (and D = 0, or +inf when t
// has mass where s has none), which needs no shift.
template <typename A>
__device__ __forceinline__ void grow(KlState<A>& st, A cs, A ct, A inv_t) {
  A shift_s = A(0), shift_t = A(0);
  if (cs > st.ms) {
    if (st.ms != neg_inf<A>()) shift_s = mul_rn(sub_rn(cs, st.ms), inv_t);
    st.ms = cs;
  }
  if (ct > st.mt) {
    if (st.mt != neg_inf<A>()) shift_t = mul_rn(sub_rn(ct, st.mt), inv_t);
    st.mt = ct;
  }
  if (shift_s != A(0)) st.zs = mul_rn(st.zs, exp_acc(-shift_s));
  if (shift_t != A(0) || shift_s != A(0)) {
    // Each D term e_t * (arg_t - arg_s) becomes r * e_t * (arg_t - arg_s - (shift_t - shift_s)).
    const A r = exp_acc(-shift_t);
    st.d = mul_rn(sub_rn(st.d, mul_rn(st.zt, sub_rn(shift_t, shift_s))), r);
    st.zt = mul_rn(st.zt, r);
  }
}

// Folds N values of each row into the state: one rescale, then N exps per row.
template <typename A, int N>
__device__ __forceinline__ void absorb(KlState<A>& st, const A (&xs)[N], const A (&xt)[N], A inv_t) {
  A cs = xs[0], ct = xt[0];
#pragma unroll
  for (int k = 1; k < N; ++k) {
    cs = max_acc(cs, xs[k]);
    ct = max_acc(ct, xt[k]);
  }
  grow(st, cs, ct, inv_t);
  // While a row is all -inf, offset 0 keeps exp(-inf - offset) = 0 (no NaN).
  const A os = st.ms == neg_inf<A>() ? A(0) : st.ms;
  const A ot = st.mt == neg_inf<A>() ? A(0) : st.mt;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const A arg_s = mul_rn(sub_rn(xs[k], os), inv_t);
    const A arg_t = mul_rn(sub_rn(xt[k], ot), inv_t);
    const A es = exp_acc(arg_s);
    const A et = exp_acc(arg_t);
    st.zs = add_rn(st.zs, es);
    st.zt = add_rn(st.zt, et);
    // e_t == 0 (masked class) adds nothing, also where arg_t - arg_s is NaN.
    if (et != A(0)) st.d = add_rn(st.d, mul_rn(et, sub_rn(arg_t, arg_s)));
  }
}

// Combines two states.  Symmetric bit for bit (both are raised to the same
// maxes, then added), so every lane of a butterfly ends with the same state.
template <typename A>
__device__ __forceinline__ KlState<A> merge(const KlState<A>& a, const KlState<A>& b, A inv_t) {
  KlState<A> x = a;
  grow(x, b.ms, b.mt, inv_t);
  KlState<A> y = b;
  grow(y, x.ms, x.mt, inv_t);
  x.zs = add_rn(x.zs, y.zs);
  x.zt = add_rn(x.zt, y.zt);
  x.d = add_rn(x.d, y.d);
  return x;
}

template <typename A>
__device__ __forceinline__ KlState<A> warp_reduce(KlState<A> st, A inv_t) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    KlState<A> o;
    o.ms = __shfl_xor_sync(0xffffffffu, st.ms, off);
    o.zs = __shfl_xor_sync(0xffffffffu, st.zs, off);
    o.mt = __shfl_xor_sync(0xffffffffu, st.mt, off);
    o.zt = __shfl_xor_sync(0xffffffffu, st.zt, off);
    o.d = __shfl_xor_sync(0xffffffffu, st.d, off);
    st = merge(st, o, inv_t);
  }
  return st;
}

// All threads of the block get the merged state.  blockDim.x is a multiple of 32.
template <typename A>
__device__ __forceinline__ KlState<A> block_reduce(KlState<A> st, A inv_t) {
  __shared__ KlState<A> shared[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  st = warp_reduce(st, inv_t);
  if (lane == 0) shared[warp] = st;
  __syncthreads();
  if (warp == 0) {
    KlState<A> v = lane < nwarps ? shared[lane] : kl_identity<A>();
    v = warp_reduce(v, inv_t);
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  return shared[0];
}

// Sweep 1 over one row pair by `nthreads` threads; kVec: 16-byte loads (the
// host checked alignment and that C is a multiple of the pack size).
template <typename T, bool kVec>
__device__ __forceinline__ KlState<typename AccOf<T>::type> row_stats(
    const T* __restrict__ s, const T* __restrict__ t, int64_t C,
    typename AccOf<T>::type inv_t, int tid, int nthreads) {
  using A = typename AccOf<T>::type;
  KlState<A> st = kl_identity<A>();
  if constexpr (kVec) {
    constexpr int V = Pack<T>::kSize;
    const Pack<T>* sp = reinterpret_cast<const Pack<T>*>(s);
    const Pack<T>* tp = reinterpret_cast<const Pack<T>*>(t);
    const int64_t nvec = C / V;
    for (int64_t v = tid; v < nvec; v += nthreads) {
      const Pack<T> ps = sp[v];
      const Pack<T> pt = tp[v];
      A xs[V], xt[V];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        xs[k] = to_acc(ps.v[k]);
        xt[k] = to_acc(pt.v[k]);
      }
      absorb<A, V>(st, xs, xt, inv_t);
    }
  } else {
    for (int64_t i = tid; i < C; i += nthreads) {
      const A xs[1] = {to_acc(s[i])};
      const A xt[1] = {to_acc(t[i])};
      absorb<A, 1>(st, xs, xt, inv_t);
    }
  }
  return st;
}

// Sweep 2: g = gscale * (p_s - p_t) for one row.
template <typename T, bool kVec>
__device__ __forceinline__ void row_grad(const T* __restrict__ s, const T* __restrict__ t,
                                         T* __restrict__ g, int64_t C,
                                         typename AccOf<T>::type inv_t,
                                         typename AccOf<T>::type gscale,
                                         const KlState<typename AccOf<T>::type>& st, int tid,
                                         int nthreads) {
  using A = typename AccOf<T>::type;
  const A os = st.ms == neg_inf<A>() ? A(0) : st.ms;
  const A ot = st.mt == neg_inf<A>() ? A(0) : st.mt;
  const A cs = gscale / st.zs;
  const A ct = gscale / st.zt;
  auto grad1 = [&](A xs, A xt) -> A {
    const A ps = mul_rn(exp_acc(mul_rn(sub_rn(xs, os), inv_t)), cs);
    const A pt = mul_rn(exp_acc(mul_rn(sub_rn(xt, ot), inv_t)), ct);
    return sub_rn(ps, pt);
  };
  if constexpr (kVec) {
    constexpr int V = Pack<T>::kSize;
    const Pack<T>* sp = reinterpret_cast<const Pack<T>*>(s);
    const Pack<T>* tp = reinterpret_cast<const Pack<T>*>(t);
    Pack<T>* gp = reinterpret_cast<Pack<T>*>(g);
    const int64_t nvec = C / V;
    for (int64_t v = tid; v < nvec; v += nthreads) {
      const Pack<T> ps = sp[v];
      const Pack<T> pt = tp[v];
      Pack<T> out;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        out.v[k] = static_cast<T>(grad1(to_acc(ps.v[k]), to_acc(pt.v[k])));
      }
      gp[v] = out;
    }
  } else {
    for (int64_t i = tid; i < C; i += nthreads) {
      g[i] = static_cast<T>(grad1(to_acc(s[i]), to_acc(t[i])));
    }
  }
}

template <typename A>
__device__ __forceinline__ A row_kl_value(const KlState<A>& st) {
  return st.d / st.zt + log_acc(st.zs / st.zt);
}

// One warp per row; blockDim.x / 32 rows per block.  `g` may be null.
template <typename T, bool kVec>
__global__ void kd_kl_warp_kernel(const T* __restrict__ s, int64_t lds, const T* __restrict__ t,
                                  int64_t ldt, T* __restrict__ g,
                                  typename AccOf<T>::type* __restrict__ row_kl, int64_t N,
                                  int64_t C, typename AccOf<T>::type inv_t,
                                  typename AccOf<T>::type gscale) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= N) return;  // the whole warp leaves together
  const T* sr = s + row * lds;
  const T* tr = t + row * ldt;
  auto st = warp_reduce(row_stats<T, kVec>(sr, tr, C, inv_t, lane, 32), inv_t);
  if (lane == 0) row_kl[row] = row_kl_value(st);
  if (g != nullptr) row_grad<T, kVec>(sr, tr, g + row * C, C, inv_t, gscale, st, lane, 32);
}

// One block per row.
template <typename T, bool kVec>
__global__ void kd_kl_block_kernel(const T* __restrict__ s, int64_t lds, const T* __restrict__ t,
                                   int64_t ldt, T* __restrict__ g,
                                   typename AccOf<T>::type* __restrict__ row_kl, int64_t C,
                                   typename AccOf<T>::type inv_t,
                                   typename AccOf<T>::type gscale) {
  const int64_t row = blockIdx.x;
  const T* sr = s + row * lds;
  const T* tr = t + row * ldt;
  auto st = block_reduce(row_stats<T, kVec>(sr, tr, C, inv_t, threadIdx.x, blockDim.x), inv_t);
  if (threadIdx.x == 0) row_kl[row] = row_kl_value(st);
  if (g != nullptr) {
    row_grad<T, kVec>(sr, tr, g + row * C, C, inv_t, gscale, st, threadIdx.x, blockDim.x);
  }
}

template <typename T>
void launch_kd_kl(const at::Tensor& s2, const at::Tensor& t2, at::Tensor* grad,
                  at::Tensor& row_kl, int64_t N, int64_t C, double inv_t, double gscale) {
  using A = typename AccOf<T>::type;
  constexpr int V = Pack<T>::kSize;
  const T* s = s2.const_data_ptr<T>();
  const T* t = t2.const_data_ptr<T>();
  T* g = grad ? grad->mutable_data_ptr<T>() : nullptr;
  const int64_t lds = s2.stride(0);
  const int64_t ldt = t2.stride(0);
  const bool vec = C % V == 0 && aligned16(s) && aligned16(t) &&
                   (g == nullptr || aligned16(g)) &&
                   (N == 1 || ((lds * static_cast<int64_t>(sizeof(T))) % 16 == 0 &&
                               (ldt * static_cast<int64_t>(sizeof(T))) % 16 == 0));
  A* out = row_kl.mutable_data_ptr<A>();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const A it = static_cast<A>(inv_t);
  const A gs = static_cast<A>(gscale);
  if (C <= 1024) {
    constexpr int kThreads = 256;  // 8 rows per block
    const int64_t blocks = (N + kThreads / 32 - 1) / (kThreads / 32);
    TORCH_CHECK(blocks <= INT32_MAX, "kdbench::kd_kl_fwd: too many rows for one launch");
    if (vec) {
      kd_kl_warp_kernel<T, true><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          s, lds, t, ldt, g, out, N, C, it, gs);
    } else {
      kd_kl_warp_kernel<T, false><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          s, lds, t, ldt, g, out, N, C, it, gs);
    }
  } else {
    const int threads = C >= 8192 ? 512 : 256;
    TORCH_CHECK(N <= INT32_MAX, "kdbench::kd_kl_fwd: too many rows for one launch");
    if (vec) {
      kd_kl_block_kernel<T, true><<<static_cast<unsigned>(N), threads, 0, stream>>>(
          s, lds, t, ldt, g, out, C, it, gs);
    } else {
      kd_kl_block_kernel<T, false><<<static_cast<unsigned>(N), threads, 0, stream>>>(
          s, lds, t, ldt, g, out, C, it, gs);
    }
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> kd_kl_fwd_cuda(const at::Tensor& s, const at::Tensor& t,
                                                  double temperature, int64_t reduction,
                                                  bool compute_grad) {
  check_kl_args(s, t, temperature, reduction, "kd_kl_fwd");
  const c10::cuda::CUDAGuard device_guard(s.device());
  const int64_t C = s.size(-1);
  const int64_t N = s.numel() / C;
  const at::Tensor s2 = as_rows(s, N, C);
  const at::Tensor t2 = as_rows(t, N, C);
  at::Tensor grad = compute_grad ? alloc_grad(s) : at::empty({0}, s.options());
  const auto acc = s.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor row_kl = at::empty({N}, s.options().dtype(acc));
  const double gscale =
      reduction == kBatchMean ? temperature / static_cast<double>(N) : temperature;
  if (N > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, s.scalar_type(), "kd_kl_fwd_cuda", [&] {
      launch_kd_kl<scalar_t>(s2, t2, compute_grad ? &grad : nullptr, row_kl, N, C,
                             1.0 / temperature, gscale);
    });
  }
  return {finalize_kl(row_kl, temperature, reduction, s), grad};
}

// ---------------------------------------------------------------------------
// MSE: grid-stride over 16-byte packs, per-block partial sums (deterministic
// for a given size: the grid depends only on n).
// ---------------------------------------------------------------------------

template <typename A>
__device__ __forceinline__ A block_sum(A v) {
  __shared__ A shared[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nwarps ? shared[lane] : A(0);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  }
  return v;  // valid in thread 0
}

template <typename T, bool kVec, bool kGrad>
__global__ void mse_kernel(const T* __restrict__ x, const T* __restrict__ y, T* __restrict__ g,
                           typename AccOf<T>::type* __restrict__ partial, int64_t n,
                           typename AccOf<T>::type gscale) {
  using A = typename AccOf<T>::type;
  A acc = A(0);
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t tail = 0;
  if constexpr (kVec) {
    constexpr int V = Pack<T>::kSize;
    const Pack<T>* xp = reinterpret_cast<const Pack<T>*>(x);
    const Pack<T>* yp = reinterpret_cast<const Pack<T>*>(y);
    const int64_t nvec = n / V;
    for (int64_t v = tid; v < nvec; v += stride) {
      const Pack<T> px = xp[v];
      const Pack<T> py = yp[v];
      Pack<T> pg;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const A d = to_acc(px.v[k]) - to_acc(py.v[k]);
        acc += d * d;
        if constexpr (kGrad) pg.v[k] = static_cast<T>(d * gscale);
      }
      if constexpr (kGrad) reinterpret_cast<Pack<T>*>(g)[v] = pg;
    }
    tail = nvec * V;
  }
  for (int64_t i = tail + tid; i < n; i += stride) {
    const A d = to_acc(x[i]) - to_acc(y[i]);
    acc += d * d;
    if constexpr (kGrad) g[i] = static_cast<T>(d * gscale);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

template <typename T>
void launch_mse(const at::Tensor& xc, const at::Tensor& yc, at::Tensor* grad, at::Tensor& partial,
                int64_t n, int blocks, int threads) {
  using A = typename AccOf<T>::type;
  const T* x = xc.const_data_ptr<T>();
  const T* y = yc.const_data_ptr<T>();
  T* g = grad ? grad->mutable_data_ptr<T>() : nullptr;
  A* out = partial.mutable_data_ptr<A>();
  const A gs = static_cast<A>(2.0 / static_cast<double>(n));
  const bool vec = aligned16(x) && aligned16(y) && (g == nullptr || aligned16(g));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (vec && g) {
    mse_kernel<T, true, true><<<blocks, threads, 0, stream>>>(x, y, g, out, n, gs);
  } else if (vec) {
    mse_kernel<T, true, false><<<blocks, threads, 0, stream>>>(x, y, g, out, n, gs);
  } else if (g) {
    mse_kernel<T, false, true><<<blocks, threads, 0, stream>>>(x, y, g, out, n, gs);
  } else {
    mse_kernel<T, false, false><<<blocks, threads, 0, stream>>>(x, y, g, out, n, gs);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> mse_fwd_cuda(const at::Tensor& x, const at::Tensor& y,
                                                bool compute_grad) {
  check_mse_args(x, y, "mse_fwd");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor yc = y.contiguous();
  const int64_t n = x.numel();
  at::Tensor grad = compute_grad ? alloc_grad(x) : at::empty({0}, x.options());
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  constexpr int kThreads = 256;
  const int64_t per_block = static_cast<int64_t>(kThreads) * (16 / x.element_size()) * 4;
  const int blocks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(1024, (n + per_block - 1) / per_block)));
  at::Tensor partial = at::empty({blocks}, x.options().dtype(acc));
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "mse_fwd_cuda", [&] {
      launch_mse<scalar_t>(xc, yc, compute_grad ? &grad : nullptr, partial, n, blocks, kThreads);
    });
  } else {
    partial.zero_();
  }
  at::Tensor loss = partial.sum().div_(static_cast<double>(n)).to(x.scalar_type());
  return {loss, grad};
}

}  // namespace
}  // namespace kdbench

TORCH_LIBRARY_IMPL(kdbench, CUDA, m) {
  m.impl("kd_kl_fwd", &kdbench::kd_kl_fwd_cuda);
  m.impl("mse_fwd", &kdbench::mse_fwd_cuda);
}

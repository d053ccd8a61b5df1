// CUDA part of kdbench::linear_divergence_fwd: the divergence sweep over one
// chunk of logits.  The chunk loop and its matmuls (cuBLAS through ATen) are
// linear_divergence_fwd_impl in linear_divergence.cpp, shared with the CPU.
//
// One block per row, four sweeps over the row (which the matmul just wrote, so
// mostly from L2): the maxes; Z = sum exp((x - max) / T); the divergence terms
// l_j and a_j = q_j * d loss / d q_j, summed; then, for the gradient,
// gscale * (a_j - q_j * sum a) written over the student's logits.  The same
// formulas as the CPU kernel (kd_loss_cpu_kernels.h, div_rows); sums in fp32
// (fp64 for fp64 inputs).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

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

__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }
__device__ __forceinline__ float max_acc(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_acc(double a, double b) { return fmax(a, b); }

struct MaxOp {
  template <typename A>
  __device__ __forceinline__ A operator()(A a, A b) const { return max_acc(a, b); }
};
struct SumOp {
  template <typename A>
  __device__ __forceinline__ A operator()(A a, A b) const { return a + b; }
};

// Every thread of the block gets the reduction of v.  blockDim.x is a multiple of 32.
template <typename A, typename Op>
__device__ __forceinline__ A block_all_reduce(A v, Op op, A identity, A* shared /* [33] */) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nwarps ? shared[lane] : identity;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
    if (lane == 0) shared[32] = v;
  }
  __syncthreads();
  const A out = shared[32];
  __syncthreads();  // shared is reused by the next reduction
  return out;
}

// One class's divergence term l and a = q * d loss / d q (see kdbench::Divergence).
template <typename A>
__device__ __forceinline__ void div_term(int64_t kind, A prm, A q, A p, A lq, A lp, A& l, A& a) {
  const A zero(0), half(0.5), one(1);
  switch (kind) {
    case kForwardKl:
      l = p > zero ? p * (lp - lq) : zero;
      a = -p;
      break;
    case kReverseKl:
      l = q > zero ? q * (lq - lp) : zero;
      a = l;
      break;
    case kJsd: {
      const A lm = log_acc(prm * p + (one - prm) * q);
      const A tq = q > zero ? q * (lq - lm) : zero;
      l = prm * (p > zero ? p * (lp - lm) : zero) + (one - prm) * tq;
      a = (one - prm) * tq;
      break;
    }
    case kSkewForwardKl: {
      const A m = prm * p + (one - prm) * q;
      l = p > zero ? p * (lp - log_acc(m)) : zero;
      a = m > zero ? -(one - prm) * p * q / m : zero;
      break;
    }
    case kSkewReverseKl: {
      const A m = prm * q + (one - prm) * p;
      l = q > zero ? q * (lq - log_acc(m)) : zero;
      a = l - (m > zero ? prm * q * q / m : zero);
      break;
    }
    default: {  // total variation
      const A d = q - p;
      l = half * fabs(d);
      a = d > zero ? half * q : (d < zero ? -half * q : zero);
      break;
    }
  }
}

template <typename T>
__global__ void div_rows_kernel(T* __restrict__ s, const T* __restrict__ t, int64_t ldt, int64_t C,
                                typename AccOf<T>::type* __restrict__ row_loss, int64_t kind,
                                typename AccOf<T>::type prm, typename AccOf<T>::type inv_t,
                                typename AccOf<T>::type gscale, bool want_grad) {
  using A = typename AccOf<T>::type;
  __shared__ A shared[33];
  const int64_t row = blockIdx.x;
  T* sr = s + row * C;
  const T* tr = t + row * ldt;
  const A ninf = static_cast<A>(-INFINITY);

  A ms = ninf, mt = ninf;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
    ms = max_acc(ms, static_cast<A>(sr[i]));
    mt = max_acc(mt, static_cast<A>(tr[i]));
  }
  ms = block_all_reduce(ms, MaxOp(), ninf, shared);
  mt = block_all_reduce(mt, MaxOp(), ninf, shared);

  A zs = 0, zt = 0;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
    zs += exp_acc((static_cast<A>(sr[i]) - ms) * inv_t);
    zt += exp_acc((static_cast<A>(tr[i]) - mt) * inv_t);
  }
  zs = block_all_reduce(zs, SumOp(), A(0), shared);
  zt = block_all_reduce(zt, SumOp(), A(0), shared);
  const A lzs = log_acc(zs), lzt = log_acc(zt);

  // q, p, log q, log p of class i.
  auto probs = [&](int64_t i, A& q, A& p, A& lq, A& lp) {
    const A us = (static_cast<A>(sr[i]) - ms) * inv_t;
    const A ut = (static_cast<A>(tr[i]) - mt) * inv_t;
    q = exp_acc(us) / zs;
    p = exp_acc(ut) / zt;
    lq = us - lzs;
    lp = ut - lzt;
  };
  A loss = 0, sum_a = 0;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
    A q, p, lq, lp, l, a;
    probs(i, q, p, lq, lp);
    div_term(kind, prm, q, p, lq, lp, l, a);
    loss += l;
    sum_a += a;
  }
  loss = block_all_reduce(loss, SumOp(), A(0), shared);
  sum_a = block_all_reduce(sum_a, SumOp(), A(0), shared);
  if (threadIdx.x == 0) row_loss[row] = loss;
  if (!want_grad) return;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
    A q, p, lq, lp, l, a;
    probs(i, q, p, lq, lp);
    div_term(kind, prm, q, p, lq, lp, l, a);
    sr[i] = static_cast<T>(gscale * (a - q * sum_a));
  }
}

void div_rows_cuda(const at::Tensor& zs, const at::Tensor& zt, const at::Tensor& row_loss,
                   const DivParams& p, bool want_grad) {
  const int64_t rows = zs.size(0);
  const int64_t C = zs.size(1);
  if (rows == 0) return;
  TORCH_CHECK(rows <= INT32_MAX, "kdbench::linear_divergence_fwd: too many rows for one launch");
  const int threads = C >= 8192 ? 512 : 256;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, zs.scalar_type(), "linear_divergence_cuda", [&] {
    using A = typename AccOf<scalar_t>::type;
    div_rows_kernel<scalar_t><<<static_cast<unsigned>(rows), threads, 0, stream>>>(
        zs.mutable_data_ptr<scalar_t>(), zt.const_data_ptr<scalar_t>(), zt.stride(0), C,
        row_loss.mutable_data_ptr<A>(), p.kind, static_cast<A>(p.param), static_cast<A>(p.inv_t),
        static_cast<A>(p.gscale), want_grad);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_divergence_fwd_cuda(
    const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& th, const c10::optional<at::Tensor>& tw,
    const c10::optional<at::Tensor>& tb, const c10::optional<at::Tensor>& tl,
    const c10::optional<at::Tensor>& mask, int64_t divergence, double param, double temperature,
    int64_t chunk_size, std::array<bool, 3> grad_mask) {
  const c10::cuda::CUDAGuard device_guard(hidden.device());
  return linear_divergence_fwd_impl(hidden, weight, bias, th, tw, tb, tl, mask, divergence, param,
                                    temperature, chunk_size, grad_mask, &div_rows_cuda);
}

}  // namespace
}  // namespace kdbench

TORCH_LIBRARY_IMPL(kdbench, CUDA, m) {
  m.impl("linear_divergence_fwd", &kdbench::linear_divergence_fwd_cuda);
}

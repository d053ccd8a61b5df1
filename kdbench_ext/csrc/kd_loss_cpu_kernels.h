// Vectorised CPU kernels for the fused KD losses, written once with ATen's
// at::vec and compiled once per instruction set.  Each including translation
// unit defines KDBENCH_ISA_NS (the namespace of its build) and CPU_CAPABILITY
// (the at::vec flavour) before including this file.
//
// Temperature KL, one row at a time (p = softmax(x / T)):
//   sweep 1 (reads the logits from memory once): the row is cut into chunks of
//     K elements that stay in L1.  For each chunk: its max for s and t, then an
//     online (max, sum) update that rescales the running sums only when the
//     max grows, then e = exp((x - running max) / T) for both rows,
//     accumulating Z_s, Z_t and D = sum e_t * (arg_t - arg_s); the
//     exponentials go to a per-thread scratch row (L2) together with the max
//     each chunk used.
//   sweep 2 (only when a gradient is wanted, reading the scratch row, not the
//     logits): grad = gscale * (e_s * exp((m_c - M_s)/T) / Z_s
//                               - e_t * exp((m'_c - M_t)/T) / Z_t).
//   KL(p_t || p_s) = D / Z_t + log(Z_s / Z_t).
// Sums run in fp32 vector lanes (fp64 for fp64 inputs) within a chunk and in
// fp64 across chunks.
// Classes that are -inf in both rows contribute exactly zero to the loss and
// get a zero gradient; identical rows give exactly zero loss and gradient
// (the s and t paths run the same operations; the build disables FMA
// contraction so a*b - c*d stays exact when a*b == c*d).

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <tuple>
#include <type_traits>

#include "kd_loss_cpu.h"

#ifndef KDBENCH_ISA_NS
#error "define KDBENCH_ISA_NS before including kd_loss_cpu_kernels.h"
#endif

namespace kdbench {
namespace cpu {
namespace KDBENCH_ISA_NS {
namespace {

using at::vec::Vectorized;

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

// exp for fp32 lanes holding x <= 0 or NaN (our arguments are (x - max) / T):
// Cephes expf, range reduction by ln 2 and a degree-5 polynomial, about 1 ulp.
// Exactly 0 for x < -87 (-inf included), so that no result is subnormal
// (exp(-87) = 1.6e-38; subnormal results take a slow microcode path on x86);
// NaN propagates.
inline Vectorized<float> vexp(const Vectorized<float>& x) {
  using V = Vectorized<float>;
  using VI = Vectorized<int32_t>;
  const V lo(-87.0f);
  const V log2e(1.44269504088896341f);
  const V neg_ln2_hi(-0.693359375f);
  const V neg_ln2_lo(2.12194440e-4f);
  const V p0(1.9875691500e-4f), p1(1.3981999507e-3f), p2(8.3334519073e-3f);
  const V p3(4.1665795894e-2f), p4(1.6666665459e-1f), p5(5.0000001201e-1f);
  const V one(1.0f);
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  const V xc = at::vec::clamp_min(x, lo);  // one vmaxps; returns x when x is NaN
#else
  const V xc = at::vec::maximum(x, lo);  // the generic clamp_min would drop NaN
#endif
  const V fx = (xc * log2e).round();
  V r = at::vec::fmadd(fx, neg_ln2_hi, xc);
  r = at::vec::fmadd(fx, neg_ln2_lo, r);
  V y = at::vec::fmadd(p0, r, p1);
  y = at::vec::fmadd(y, r, p2);
  y = at::vec::fmadd(y, r, p3);
  y = at::vec::fmadd(y, r, p4);
  y = at::vec::fmadd(y, r, p5);
  y = at::vec::fmadd(y, r * r, r + one);
  const VI n = at::vec::convert_to_int_of_same_size(fx);
  const VI bits = (n + VI(127)) << VI(23);
  y = y * at::vec::cast<float>(bits);
  return V::blendv(y, V(0.0f), x < lo);
}

// Running max that need not propagate NaN (a NaN reaches the sums via exp).
template <typename A>
inline Vectorized<A> vmax_fast(const Vectorized<A>& acc, const Vectorized<A>& x) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  return at::vec::clamp_min(x, acc);
#else
  return at::vec::maximum(acc, x);
#endif
}

// Flush-to-zero and denormals-are-zero while a kernel runs (restored after):
// subnormal operands or results, e.g. the product of two tiny probabilities,
// would otherwise take a microcode assist of ~100 cycles each.
struct FlushDenormalsGuard {
#if defined(__x86_64__) || defined(_M_X64)
  unsigned int saved;
  FlushDenormalsGuard() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040u); }
  ~FlushDenormalsGuard() { _mm_setcsr(saved); }
#endif
};

template <typename T>
inline void prefetch_l2(const T* p) {
#if defined(__GNUC__)
  __builtin_prefetch(static_cast<const void*>(p), 0, 2);
#endif
}

inline Vectorized<double> vexp(const Vectorized<double>& x) {
  return x.map(static_cast<double (*)(double)>(std::exp));
}

template <typename T>
inline Vectorized<typename AccOf<T>::type> vload(const T* p) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    return Vectorized<T>::loadu(p);
  } else {
    Vectorized<float> out;
    at::vec::load_to_float(p, out);
    return out;
  }
}

// Loads n < size() elements; the other lanes get `pad`.
template <typename T, typename A = typename AccOf<T>::type>
inline Vectorized<A> vload_partial(const T* p, int64_t n, A pad) {
  if constexpr (std::is_same_v<T, A>) {
    return Vectorized<A>::set(Vectorized<A>(pad), Vectorized<A>::loadu(p, n), n);
  } else {  // 16-bit: n < size() elements fit in the low half of one Vectorized<T>
    const auto lo = std::get<0>(at::vec::convert_to_float<T>(Vectorized<T>::loadu(p, n)));
    return Vectorized<A>::set(Vectorized<A>(pad), lo, n);
  }
}

template <typename T, typename A = typename AccOf<T>::type>
inline void vstore(T* p, const Vectorized<A>& v) {
  if constexpr (std::is_same_v<T, A>) {
    v.store(p);
  } else {
    const auto packed = at::vec::convert_from_float<T>(v, v);
    packed.store(p, Vectorized<A>::size());
  }
}

// Stores 2 * size() elements (one full vector of a 16-bit type).
template <typename T, typename A = typename AccOf<T>::type>
inline void vstore2(T* p, const Vectorized<A>& a, const Vectorized<A>& b) {
  if constexpr (std::is_same_v<T, A>) {
    a.store(p);
    b.store(p + Vectorized<A>::size());
  } else {
    at::vec::convert_from_float<T>(a, b).store(p);
  }
}

template <typename T, typename A = typename AccOf<T>::type>
inline void vstore_partial(T* p, const Vectorized<A>& v, int64_t n) {
  if constexpr (std::is_same_v<T, A>) {
    v.store(p, n);
  } else {
    at::vec::convert_from_float<T>(v, v).store(p, n);
  }
}

// Max over lanes (a NaN lane may or may not win; NaN reaches the sums anyway).
template <typename A>
inline A hmax(const Vectorized<A>& v) {
  return at::vec::vec_reduce_all<A>(
      [](const Vectorized<A>& x, const Vectorized<A>& y) { return vmax_fast(x, y); }, v);
}

template <typename A>
inline double hsum(const Vectorized<A>& v) {
  return static_cast<double>(at::vec::vec_reduce_all<A>(
      [](const Vectorized<A>& x, const Vectorized<A>& y) { return x + y; }, v));
}

template <typename T>
void kl_rows(const KlArgs& a, int64_t begin, int64_t end) {
  using A = typename AccOf<T>::type;
  using V = Vectorized<A>;
  constexpr int64_t W = V::size();
  constexpr int64_t K = 128 * W;  // chunk: 8 KiB of fp32 per row, L1-resident
  constexpr A ninf = -std::numeric_limits<A>::infinity();
  const int64_t C = a.C;
  const int64_t nchunks = (C + K - 1) / K;
  const int64_t cpad = (C + W - 1) / W * W;
  const bool want_grad = a.grad != nullptr;
  const V vinv(static_cast<A>(a.inv_t)), vzero(A(0)), vninf(ninf);

  // Per-thread scratch: exp rows for s and t (only with a gradient) and the
  // running max each chunk used.
  std::unique_ptr<A[]> scratch(new A[(want_grad ? 2 * cpad : 0) + 2 * nchunks]);
  FlushDenormalsGuard ftz;
  A* cms = scratch.get();
  A* cmt = cms + nchunks;
  A* es = cmt + nchunks;
  A* et = es + (want_grad ? cpad : 0);

  for (int64_t row = begin; row < end; ++row) {
    const T* sp = static_cast<const T*>(a.s) + row * a.lds;
    const T* tp = static_cast<const T*>(a.t) + row * a.ldt;
    // Running maxes of the raw logits.  With u = x / T and M = max / T:
    //   Z = sum exp(u - M),  D = sum e_t * ((u_t - M_t) - (u_s - M_s)),
    // so KL = D / Z_t - log Z_t + log Z_s with no cancellation of large terms.
    // Z and D are kept in fp64; each chunk's part is summed in vector lanes.
    A ms = ninf, mt = ninf;
    double Zs = 0.0, Zt = 0.0, D = 0.0;

    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t i0 = c * K;
      const int64_t len = std::min(K, C - i0);
      const int64_t nfull = len / W * W;
      const int64_t rem = len - nfull;
      const T* sc = sp + i0;
      const T* tc = tp + i0;

      V vms = vninf, vmt = vninf;
      for (int64_t i = 0; i < nfull; i += W) {
        vms = vmax_fast(vms, vload(sc + i));
        vmt = vmax_fast(vmt, vload(tc + i));
      }
      if (rem) {
        vms = vmax_fast(vms, vload_partial(sc + nfull, rem, ninf));
        vmt = vmax_fast(vmt, vload_partial(tc + nfull, rem, ninf));
      }
      const A cs = hmax(vms);
      const A ct = hmax(vmt);
      // Online update: rescale the sums only when a max grows.  While a row is
      // all -inf so far its sums are 0 (or D is +inf) and need no shift.
      double shift_s = 0.0, shift_t = 0.0;  // growth of M_s, M_t (in x / T)
      if (cs > ms) {
        if (ms != ninf) shift_s = (static_cast<double>(cs) - ms) * a.inv_t;
        ms = cs;
      }
      if (ct > mt) {
        if (mt != ninf) shift_t = (static_cast<double>(ct) - mt) * a.inv_t;
        mt = ct;
      }
      if (shift_s != 0.0) Zs *= std::exp(-shift_s);
      if (shift_t != 0.0 || shift_s != 0.0) {
        const double r = std::exp(-shift_t);
        D = (D - Zt * (shift_t - shift_s)) * r;
        Zt *= r;
      }
      V zs(A(0)), zt(A(0)), dv(A(0));
      cms[c] = ms;
      cmt[c] = mt;
      // A row that is all -inf so far uses offset 0: exp(-inf) = 0, no NaN.
      const V vms_off(ms == ninf ? A(0) : ms);
      const V vmt_off(mt == ninf ? A(0) : mt);
      A* esc = es + i0;
      A* etc_ = et + i0;
      // While this chunk is computed (from L1), pull the next one (the next
      // row's first chunk after the last) into L2, so that memory and
      // arithmetic overlap instead of taking turns.
      const T* ns = c + 1 < nchunks ? sc + K : (row + 1 < end ? sp + a.lds : nullptr);
      const T* nt = c + 1 < nchunks ? tc + K : (row + 1 < end ? tp + a.ldt : nullptr);
      const int64_t nlen = ns == nullptr ? 0 : (c + 1 < nchunks ? std::min(K, C - i0 - K) : std::min(K, C));
      auto step = [&](const V& xs, const V& xt, int64_t i) {
        if (i < nlen) {
          prefetch_l2(ns + i);
          prefetch_l2(nt + i);
        }
        const V arg_s = (xs - vms_off) * vinv;
        const V arg_t = (xt - vmt_off) * vinv;
        const V e_s = vexp(arg_s);
        const V e_t = vexp(arg_t);
        zs = zs + e_s;
        zt = zt + e_t;
        // e_t == 0 (masked or underflowed class) contributes 0, also where
        // arg_t - arg_s is -inf - -inf = NaN.
        dv = dv + V::blendv(vzero, e_t * (arg_t - arg_s), e_t != vzero);
        if (want_grad) {
          e_s.store(esc + i);
          e_t.store(etc_ + i);
        }
      };
      for (int64_t i = 0; i < nfull; i += W) {
        step(vload(sc + i), vload(tc + i), i);
      }
      if (rem) {
        step(vload_partial(sc + nfull, rem, ninf), vload_partial(tc + nfull, rem, ninf), nfull);
      }
      Zs += hsum(zs);
      Zt += hsum(zt);
      D += hsum(dv);
    }

    a.row_kl[row] = D / Zt + std::log(Zs / Zt);

    if (want_grad) {
      T* gp = static_cast<T*>(a.grad) + row * C;
      for (int64_t c = 0; c < nchunks; ++c) {
        // exp((m_c - M) / T) / Z turns this chunk's e into probabilities.
        const double fs = cms[c] == ninf ? 0.0
                          : cms[c] == ms ? a.gscale / Zs
                                         : a.gscale * std::exp((static_cast<double>(cms[c]) - ms) * a.inv_t) / Zs;
        const double ft = cmt[c] == ninf ? 0.0
                          : cmt[c] == mt ? a.gscale / Zt
                                         : a.gscale * std::exp((static_cast<double>(cmt[c]) - mt) * a.inv_t) / Zt;
        const V vfs(static_cast<A>(fs)), vft(static_cast<A>(ft));
        const int64_t i0 = c * K;
        const int64_t len = std::min(K, C - i0);
        const int64_t nfull = len / W * W;
        const int64_t rem = len - nfull;
        int64_t i = i0;
        for (; i + 2 * W <= i0 + nfull; i += 2 * W) {
          vstore2(gp + i, vfs * V::loadu(es + i) - vft * V::loadu(et + i),
                  vfs * V::loadu(es + i + W) - vft * V::loadu(et + i + W));
        }
        if (i < i0 + nfull) {
          vstore(gp + i, vfs * V::loadu(es + i) - vft * V::loadu(et + i));
        }
        if (rem) {
          const int64_t i = i0 + nfull;
          vstore_partial(gp + i, vfs * V::loadu(es + i) - vft * V::loadu(et + i), rem);
        }
      }
    }
  }
}

template <typename T, bool kGrad>
double mse_range_impl(const MseArgs& a, int64_t begin, int64_t end) {
  using A = typename AccOf<T>::type;
  using V = Vectorized<A>;
  constexpr int64_t W = V::size();
  const T* x = static_cast<const T*>(a.x);
  const T* y = static_cast<const T*>(a.y);
  T* g = static_cast<T*>(a.grad);
  const V gs(static_cast<A>(a.gscale));
  FlushDenormalsGuard ftz;
  V acc0(A(0)), acc1(A(0)), acc2(A(0)), acc3(A(0));
  int64_t i = begin;
  for (; i + 4 * W <= end; i += 4 * W) {
    const V d0 = vload(x + i) - vload(y + i);
    const V d1 = vload(x + i + W) - vload(y + i + W);
    const V d2 = vload(x + i + 2 * W) - vload(y + i + 2 * W);
    const V d3 = vload(x + i + 3 * W) - vload(y + i + 3 * W);
    acc0 = at::vec::fmadd(d0, d0, acc0);
    acc1 = at::vec::fmadd(d1, d1, acc1);
    acc2 = at::vec::fmadd(d2, d2, acc2);
    acc3 = at::vec::fmadd(d3, d3, acc3);
    if constexpr (kGrad) {
      vstore2(g + i, d0 * gs, d1 * gs);
      vstore2(g + i + 2 * W, d2 * gs, d3 * gs);
    }
  }
  acc0 = acc0 + acc2;
  acc1 = acc1 + acc3;
  for (; i + W <= end; i += W) {
    const V d = vload(x + i) - vload(y + i);
    acc0 = at::vec::fmadd(d, d, acc0);
    if constexpr (kGrad) vstore(g + i, d * gs);
  }
  if (i < end) {
    const int64_t rem = end - i;
    const V d = vload_partial(x + i, rem, A(0)) - vload_partial(y + i, rem, A(0));
    acc0 = at::vec::fmadd(d, d, acc0);
    if constexpr (kGrad) vstore_partial(g + i, d * gs, rem);
  }
  return hsum(acc0 + acc1);
}

template <typename T>
double mse_range(const MseArgs& a, int64_t begin, int64_t end) {
  return a.grad ? mse_range_impl<T, true>(a, begin, end) : mse_range_impl<T, false>(a, begin, end);
}


// Divergence rows of linear_divergence_fwd.  Per row (u = x / T, q = softmax(u_s)
// the student's, p = softmax(u_t) the teacher's), four sweeps over the row,
// which stays in L2:
//   1. the maxes M_s, M_t;
//   2. e = exp(u - M) into two per-thread scratch rows, Z = sum e;
//   3. q, p, log q, log p; each class's divergence term l_j and
//      a_j = q_j * d loss / d q_j (the scratch rows now hold q and a);
//      loss = sum l, S = sum a;
//   4. (gradient) d loss / d u_j = a_j - q_j * S, times gscale, written over
//      the student's logits.
// A class whose term is a product with p = 0 (or q = 0) adds exactly 0, never
// 0 * inf.  Sums: vector lanes within blocks of K classes, fp64 across blocks.
template <typename T>
void div_rows(const DivArgs& a, int64_t begin, int64_t end) {
  using A = typename AccOf<T>::type;
  using V = Vectorized<A>;
  constexpr int64_t W = V::size();
  constexpr int64_t K = 128 * W;
  constexpr A ninf = -std::numeric_limits<A>::infinity();
  const int64_t C = a.C;
  const int64_t nfull = C / W * W;
  const int64_t rem = C - nfull;
  const int64_t cpad = nfull + (rem ? W : 0);
  std::unique_ptr<A[]> scratch(new A[2 * cpad]);
  A* eq = scratch.get();  // e_s, then q
  A* ea = eq + cpad;      // e_t, then a
  FlushDenormalsGuard ftz;
  const A prm = static_cast<A>(a.param);
  const V vinv(static_cast<A>(a.inv_t)), vzero(A(0)), vhalf(A(0.5)), vb(prm), vb1(A(1) - prm);
  // Padding lanes read as -inf: e = 0, q = p = 0, every term 0.
  auto load = [&](const T* p, int64_t i) {
    return i < nfull ? vload(p + i) : vload_partial(p + i, rem, ninf);
  };
  auto where = [&](const V& mask, const V& x) { return V::blendv(vzero, x, mask); };
  auto safe_div = [&](const V& x, const V& m) { return where(m > vzero, x / m); };

  for (int64_t row = begin; row < end; ++row) {
    T* sp = static_cast<T*>(a.s) + row * C;
    const T* tp = static_cast<const T*>(a.t) + row * a.ldt;
    V vms(ninf), vmt(ninf);
    for (int64_t i = 0; i < cpad; i += W) {
      vms = vmax_fast(vms, load(sp, i));
      vmt = vmax_fast(vmt, load(tp, i));
    }
    const V vos(hmax(vms)), vot(hmax(vmt));
    double Zs = 0.0, Zt = 0.0;
    for (int64_t k0 = 0; k0 < cpad; k0 += K) {
      V zs(A(0)), zt(A(0));
      for (int64_t i = k0; i < std::min(cpad, k0 + K); i += W) {
        const V es = vexp((load(sp, i) - vos) * vinv);
        const V et = vexp((load(tp, i) - vot) * vinv);
        es.store(eq + i);
        et.store(ea + i);
        zs = zs + es;
        zt = zt + et;
      }
      Zs += hsum(zs);
      Zt += hsum(zt);
    }
    const V vizs(static_cast<A>(1.0 / Zs)), vizt(static_cast<A>(1.0 / Zt));
    const V vlzs(static_cast<A>(std::log(Zs))), vlzt(static_cast<A>(std::log(Zt)));
    double loss = 0.0, S = 0.0;
    for (int64_t k0 = 0; k0 < cpad; k0 += K) {
      V lacc(A(0)), sacc(A(0));
      for (int64_t i = k0; i < std::min(cpad, k0 + K); i += W) {
        const V q = V::loadu(eq + i) * vizs;
        const V p = V::loadu(ea + i) * vizt;
        const V lq = (load(sp, i) - vos) * vinv - vlzs;
        const V lp = (load(tp, i) - vot) * vinv - vlzt;
        V l, g;
        switch (a.kind) {
          case 0:  // forward KL(p || q)
            l = where(p > vzero, p * (lp - lq));
            g = vzero - p;
            break;
          case 1:  // reverse KL(q || p)
            l = where(q > vzero, q * (lq - lp));
            g = l;
            break;
          case 2: {  // generalized JSD: beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q
            const V lm = (vb * p + vb1 * q).log();
            const V tq = where(q > vzero, q * (lq - lm));
            l = vb * where(p > vzero, p * (lp - lm)) + vb1 * tq;
            g = vb1 * tq;
            break;
          }
          case 3: {  // skew forward KL(p || m), m = lambda p + (1 - lambda) q
            const V m = vb * p + vb1 * q;
            l = where(p > vzero, p * (lp - m.log()));
            g = vzero - vb1 * safe_div(p * q, m);
            break;
          }
          case 4: {  // skew reverse KL(q || m), m = lambda q + (1 - lambda) p
            const V m = vb * q + vb1 * p;
            l = where(q > vzero, q * (lq - m.log()));
            g = l - vb * safe_div(q * q, m);
            break;
          }
          default: {  // total variation: sum |p - q| / 2
            const V d = q - p;
            l = vhalf * d.abs();
            g = where(d > vzero, vhalf * q) - where(d < vzero, vhalf * q);
            break;
          }
        }
        q.store(eq + i);
        g.store(ea + i);
        lacc = lacc + l;
        sacc = sacc + g;
      }
      loss += hsum(lacc);
      S += hsum(sacc);
    }
    a.row_loss[row] = loss;
    if (a.want_grad) {
      const V vs(static_cast<A>(S)), vg(static_cast<A>(a.gscale));
      for (int64_t i = 0; i < nfull; i += W) {
        vstore(sp + i, vg * (V::loadu(ea + i) - V::loadu(eq + i) * vs));
      }
      if (rem) vstore_partial(sp + nfull, vg * (V::loadu(ea + nfull) - V::loadu(eq + nfull) * vs), rem);
    }
  }
}

}  // namespace

bool get_kernels(IsaKernels* out) {
  out->kl[kF32] = &kl_rows<float>;
  out->kl[kF64] = &kl_rows<double>;
  out->kl[kBF16] = &kl_rows<c10::BFloat16>;
  out->kl[kF16] = &kl_rows<c10::Half>;
  out->mse[kF32] = &mse_range<float>;
  out->mse[kF64] = &mse_range<double>;
  out->mse[kBF16] = &mse_range<c10::BFloat16>;
  out->mse[kF16] = &mse_range<c10::Half>;
  out->div[kF32] = &div_rows<float>;
  out->div[kF64] = &div_rows<double>;
  out->div[kBF16] = &div_rows<c10::BFloat16>;
  out->div[kF16] = &div_rows<c10::Half>;
  return true;
}

}  // namespace KDBENCH_ISA_NS
}  // namespace cpu
}  // namespace kdbench

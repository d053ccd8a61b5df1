// kdbench fused linear + divergence: the output layer and a distillation
// divergence in one chunked op, the full logit matrices never materialised.
//
// Ops (namespace kdbench, fake kernels in kdbench_ext/__init__.py):
//   linear_divergence_fwd(hidden, weight, bias?, teacher_hidden?, teacher_weight?,
//                         teacher_bias?, teacher_logits?, mask?, divergence, param,
//                         temperature, chunk_size, grad_mask[3])
//       -> (loss, grad_hidden, grad_weight, grad_bias)
//   linear_divergence(... the same without grad_mask) -> loss   (differentiable)
//
// The loss is the mean over the unmasked rows of D(p || q) (see Divergence in
// kd_loss.h), q = softmax((hidden @ weight^T + bias) / T) the student's, p the
// teacher's, from teacher_hidden @ teacher_weight^T + teacher_bias or from
// teacher_logits.  No T^2 factor: callers that want Hinton's scaling multiply.
// With no unmasked row the loss is 0 and so are the gradients.
//
// The rows are taken `chunk_size` at a time: per chunk, the student's (and the
// teacher's) logits by a matmul, one fused softmax/divergence sweep that
// overwrites the student's logits with d loss / d logits, then two matmuls
// that add that chunk's share to grad_hidden, grad_weight and grad_bias.  The
// gradients are computed in the forward (as Liger-Kernel does) rather than by
// recomputing the logits in the backward: the same four matmuls as the eager
// reference's forward + backward instead of six, and the saved state is the
// gradients themselves (the size of the parameters, which the backward would
// produce anyway), never the logits.  The backward only scales them by
// grad_output.
//
// A future top-k teacher form (the teacher's k largest logits and their
// indices) fits this schema as two more optional tensors in place of
// teacher_logits; it is not implemented yet.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>

#include "kd_autograd.h"
#include "kd_loss.h"

namespace kdbench {

namespace {

using Tensors4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

bool supported(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

void check_linear(const at::Tensor& h, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                  const char* who, int64_t N, int64_t V, const at::Device& dev) {
  constexpr const char* op = "kdbench::linear_divergence_fwd: ";
  TORCH_CHECK(h.dim() == 2, op, who, " hidden states must be [rows, hidden], got ", h.sizes());
  TORCH_CHECK(w.dim() == 2 && w.size(1) == h.size(1), op, who, " weight must be [vocab, ",
              h.size(1), "] to match its hidden states, got ", w.sizes());
  TORCH_CHECK(h.size(0) == N && w.size(0) == V, op, who, " shapes ", h.sizes(), " and ",
              w.sizes(), " do not match ", N, " rows and a vocabulary of ", V);
  TORCH_CHECK(supported(h.scalar_type()), op, "unsupported dtype ", h.scalar_type(),
              " (float32, float64, bfloat16, float16)");
  TORCH_CHECK(w.scalar_type() == h.scalar_type(), op, who, " weight and hidden states differ in dtype: ",
              w.scalar_type(), " vs ", h.scalar_type());
  TORCH_CHECK(h.device() == dev && w.device() == dev, op, "all tensors must be on ", dev);
  if (b.has_value()) {
    TORCH_CHECK(b->dim() == 1 && b->size(0) == V, op, who, " bias must be [", V, "], got ", b->sizes());
    TORCH_CHECK(b->scalar_type() == h.scalar_type(), op, who, " bias and hidden states differ in dtype");
    TORCH_CHECK(b->device() == dev, op, "all tensors must be on ", dev);
  }
}

void check_args(const at::Tensor& hidden, const at::Tensor& weight,
                const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& th,
                const c10::optional<at::Tensor>& tw, const c10::optional<at::Tensor>& tb,
                const c10::optional<at::Tensor>& tl, const c10::optional<at::Tensor>& mask,
                int64_t divergence, double param, double temperature, int64_t chunk_size) {
  constexpr const char* op = "kdbench::linear_divergence_fwd: ";
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2, op,
              "hidden states must be [rows, hidden] and the weight [vocab, hidden], got ",
              hidden.sizes(), " and ", weight.sizes());
  const int64_t N = hidden.size(0);
  const int64_t V = weight.size(0);
  TORCH_CHECK(V > 0, op, "the vocabulary is empty");
  check_linear(hidden, weight, bias, "student", N, V, hidden.device());
  TORCH_CHECK(tl.has_value() != (th.has_value() || tw.has_value()), op,
              "give the teacher either as teacher_logits or as teacher_hidden + teacher_weight");
  if (tl.has_value()) {
    TORCH_CHECK(!tb.has_value(), op, "teacher_bias goes with teacher_weight, not with teacher_logits");
    TORCH_CHECK(tl->dim() == 2 && tl->size(0) == N && tl->size(1) == V, op,
                "teacher_logits must be [", N, ", ", V, "], got ", tl->sizes());
    TORCH_CHECK(supported(tl->scalar_type()), op, "unsupported teacher dtype ", tl->scalar_type());
    TORCH_CHECK(tl->device() == hidden.device(), op, "all tensors must be on ", hidden.device());
  } else {
    TORCH_CHECK(th.has_value() && tw.has_value(), op,
                "the teacher needs both teacher_hidden and teacher_weight");
    check_linear(*th, *tw, tb, "teacher", N, V, hidden.device());
  }
  if (mask.has_value()) {
    TORCH_CHECK(mask->dim() == 1 && mask->size(0) == N && mask->scalar_type() == at::kBool, op,
                "mask must be a bool tensor of [", N, "] (True: the row counts), got ",
                mask->scalar_type(), " ", mask->sizes());
    TORCH_CHECK(mask->device() == hidden.device(), op, "all tensors must be on ", hidden.device());
  }
  TORCH_CHECK(divergence >= 0 && divergence < kNumDivergences, op, "divergence code must be 0..",
              kNumDivergences - 1, ", got ", divergence);
  if (divergence == kJsd) {
    TORCH_CHECK(param > 0.0 && param < 1.0, op, "jsd needs 0 < beta < 1, got ", param);
  }
  if (divergence == kSkewForwardKl || divergence == kSkewReverseKl) {
    TORCH_CHECK(param >= 0.0 && param < 1.0, op, "the skew KLs need 0 <= lambda < 1, got ", param);
  }
  TORCH_CHECK(temperature > 0.0 && std::isfinite(temperature), op,
              "temperature must be a positive finite number, got ", temperature);
  TORCH_CHECK(chunk_size >= 0, op, "chunk_size must be >= 0 (0: chosen from the shapes), got ",
              chunk_size);
}

// Rows per chunk when the caller gives none: the largest power of two from 16
// to 4096 whose chunk holds at most 2^24 logits (64 MiB in fp32 for the
// student, as much for the teacher), e.g. 512 rows at a vocabulary of 32000,
// 128 at 128256.  A fixed budget rather than a share of the rows: the logits'
// memory stays flat whatever the number of rows (at 8192 x 128256 one chunk is
// 1/64 of a full logit matrix), and 128 or more rows keep each matmul about as
// fast per flop as one over all rows.
int64_t default_chunk_rows(int64_t vocab) {
  int64_t rows = 4096;
  while (rows > 16 && rows * vocab > (int64_t(1) << 24)) rows /= 2;
  return rows;
}

// Sum of the per-row losses: on the CPU sequentially in fp64, the same result
// whatever the number of threads; on CUDA on the device (no synchronisation).
at::Tensor sum_rows(const at::Tensor& row_loss) {
  if (!row_loss.device().is_cpu()) return row_loss.sum();
  const double* r = row_loss.const_data_ptr<double>();
  double total = 0.0;
  for (int64_t i = 0; i < row_loss.numel(); ++i) total += r[i];
  return at::scalar_tensor(total, row_loss.options());
}

}  // namespace

Tensors4 linear_divergence_fwd_impl(
    const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& teacher_hidden, const c10::optional<at::Tensor>& teacher_weight,
    const c10::optional<at::Tensor>& teacher_bias, const c10::optional<at::Tensor>& teacher_logits,
    const c10::optional<at::Tensor>& mask, int64_t divergence, double param, double temperature,
    int64_t chunk_size, std::array<bool, 3> grad_mask, DivRowPass pass) {
  check_args(hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, teacher_logits,
             mask, divergence, param, temperature, chunk_size);
  const int64_t V = weight.size(0);
  const bool has_mask = mask.has_value();
  // Masked rows are left out before the matmuls (a language-model batch can be
  // mostly padding); on CUDA counting them synchronises once per call.
  const at::Tensor idx = has_mask ? at::nonzero(*mask).squeeze(1) : at::Tensor();
  const int64_t n = has_mask ? idx.size(0) : hidden.size(0);
  const at::ScalarType dt = hidden.scalar_type();
  const at::ScalarType teacher_dt =
      teacher_logits.has_value() ? teacher_logits->scalar_type() : teacher_hidden->scalar_type();
  const at::ScalarType row_dt = at::promote_types(dt, teacher_dt);  // what the sweep reads
  const bool on_cpu = hidden.device().is_cpu();
  const at::ScalarType acc = on_cpu || row_dt == at::kDouble ? at::kDouble : at::kFloat;
  const bool need_h = grad_mask[0];
  const bool need_w = grad_mask[1];
  const bool need_b = grad_mask[2] && bias.has_value();
  const bool want_grad = need_h || need_w || need_b;

  const auto contiguous = at::MemoryFormat::Contiguous;
  at::Tensor gh = !need_h     ? at::empty({0}, hidden.options())
                  : has_mask  ? at::zeros_like(hidden, contiguous)
                              : at::empty_like(hidden, contiguous);
  at::Tensor gw = need_w ? at::empty_like(weight, contiguous) : at::empty({0}, weight.options());
  at::Tensor gb_acc = need_b ? at::zeros({V}, weight.options().dtype(acc)) : at::Tensor();
  at::Tensor row_loss = at::empty({n}, hidden.options().dtype(acc));

  DivParams p;
  p.kind = divergence;
  p.param = param;
  p.inv_t = 1.0 / temperature;
  p.gscale = n > 0 ? 1.0 / (temperature * static_cast<double>(n)) : 0.0;

  const int64_t R = chunk_size > 0 ? chunk_size : default_chunk_rows(V);
  for (int64_t r0 = 0; r0 < n; r0 += R) {
    const int64_t r = std::min(R, n - r0);
    const at::Tensor rows = has_mask ? idx.narrow(0, r0, r) : at::Tensor();
    auto take = [&](const at::Tensor& x) {
      return has_mask ? x.index_select(0, rows) : x.narrow(0, r0, r);
    };
    auto logits = [](const at::Tensor& h, const at::Tensor& w, const c10::optional<at::Tensor>& b) {
      return b.has_value() ? at::addmm(*b, h, w.t()) : at::mm(h, w.t());
    };
    const at::Tensor hc = take(hidden);
    at::Tensor zs = logits(hc, weight, bias);
    at::Tensor zt = teacher_logits.has_value()
                        ? take(*teacher_logits)
                        : logits(take(*teacher_hidden), *teacher_weight, teacher_bias);
    if (zs.scalar_type() != row_dt) zs = zs.to(row_dt);
    zs = zs.contiguous();
    if (zt.scalar_type() != row_dt) zt = zt.to(row_dt);
    if (V > 1 && zt.stride(1) != 1) zt = zt.contiguous();

    pass(zs, zt, row_loss.narrow(0, r0, r), p, want_grad);
    if (!want_grad) continue;

    const at::Tensor dz = zs.scalar_type() == dt ? zs : zs.to(dt);  // d loss / d logits
    if (need_h) {
      if (has_mask) {
        gh.index_copy_(0, rows, at::mm(dz, weight));
      } else {
        at::Tensor out = gh.narrow(0, r0, r);
        at::mm_out(out, dz, weight);
      }
    }
    if (need_w) {
      if (r0 == 0) {
        at::mm_out(gw, dz.t(), hc);
      } else {
        gw.addmm_(dz.t(), hc);
      }
    }
    if (need_b) gb_acc.add_(at::sum(dz, {0}, false, acc));
  }
  if (need_w && n == 0) gw.zero_();

  at::Tensor loss = n > 0 ? sum_rows(row_loss).div_(static_cast<double>(n))
                          : at::zeros({}, row_loss.options());
  at::Tensor gb = need_b ? gb_acc.to(bias->scalar_type()) : at::empty({0}, weight.options());
  return {loss.to(dt), gh, gw, gb};
}

namespace {

Tensors4 linear_divergence_fwd_cpu(
    const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& th, const c10::optional<at::Tensor>& tw,
    const c10::optional<at::Tensor>& tb, const c10::optional<at::Tensor>& tl,
    const c10::optional<at::Tensor>& mask, int64_t divergence, double param, double temperature,
    int64_t chunk_size, std::array<bool, 3> grad_mask) {
  return linear_divergence_fwd_impl(hidden, weight, bias, th, tw, tb, tl, mask, divergence, param,
                                    temperature, chunk_size, grad_mask, &div_rows_cpu);
}

struct LinearDivergenceBackward : public ag::Node {
  std::array<SavedGrad, 3> saved;  // hidden, weight, bias
  std::array<bool, 3> has{};

  std::string name() const override { return "LinearDivergenceBackward"; }
  void will_release_variables() override {
    for (auto& s : saved) s.releasing = true;
  }
  void release_variables() override {
    for (auto& s : saved) s.grad.reset();
  }

  ag::variable_list apply(ag::variable_list&& grads) override {
    ag::variable_list out(3);
    const at::Tensor& go = grads[0];
    if (!go.defined()) return out;
    for (size_t i = 0; i < 3; ++i) {
      if (has[i] && task_should_compute_output(i)) out[i] = saved[i].scaled(go, "linear_divergence");
    }
    return out;
  }
};

using FwdSig = Tensors4(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                        const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                        const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                        const c10::optional<at::Tensor>&, int64_t, double, double, int64_t,
                        std::array<bool, 3>);

const c10::TypedOperatorHandle<FwdSig>& fwd_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("kdbench::linear_divergence_fwd", "")
                             .typed<FwdSig>();
  return op;
}

at::Tensor linear_divergence_autograd(
    const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& th, const c10::optional<at::Tensor>& tw,
    const c10::optional<at::Tensor>& tb, const c10::optional<at::Tensor>& tl,
    const c10::optional<at::Tensor>& mask, int64_t divergence, double param, double temperature,
    int64_t chunk_size) {
  const bool grad_mode = at::GradMode::is_enabled();
  for (const auto* t : {&th, &tw, &tb, &tl}) {
    TORCH_CHECK(!(grad_mode && t->has_value() && (*t)->requires_grad()),
                "kdbench::linear_divergence: a teacher tensor requires grad, but the fused op only "
                "differentiates the student; detach it, or call kdbench.losses.linear_divergence, "
                "which uses the PyTorch reference in that case");
  }
  const std::array<bool, 3> need = {grad_mode && hidden.requires_grad(),
                                    grad_mode && weight.requires_grad(),
                                    grad_mode && bias.has_value() && bias->requires_grad()};
  at::Tensor loss, gh, gw, gb;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(loss, gh, gw, gb) = fwd_op().call(hidden, weight, bias, th, tw, tb, tl, mask, divergence,
                                               param, temperature, chunk_size, need);
  }
  if (need[0] || need[1] || need[2]) {
    auto node = make_node<LinearDivergenceBackward>();
    node->set_next_edges(ag::collect_next_edges(hidden, weight, bias.has_value() ? *bias : at::Tensor()));
    node->has = need;
    node->saved[0].grad = std::move(gh);
    node->saved[1].grad = std::move(gw);
    node->saved[2].grad = std::move(gb);
    ag::set_history(loss, std::move(node));
  }
  return loss;
}

at::Tensor linear_divergence_composite(
    const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& th, const c10::optional<at::Tensor>& tw,
    const c10::optional<at::Tensor>& tb, const c10::optional<at::Tensor>& tl,
    const c10::optional<at::Tensor>& mask, int64_t divergence, double param, double temperature,
    int64_t chunk_size) {
  return std::get<0>(fwd_op().call(hidden, weight, bias, th, tw, tb, tl, mask, divergence, param,
                                   temperature, chunk_size, {false, false, false}));
}

}  // namespace
}  // namespace kdbench

TORCH_LIBRARY_FRAGMENT(kdbench, m) {
  const std::vector<at::Tag> tags = {at::Tag::pt2_compliant_tag};
  m.def("linear_divergence_fwd(Tensor hidden, Tensor weight, Tensor? bias, Tensor? teacher_hidden, "
        "Tensor? teacher_weight, Tensor? teacher_bias, Tensor? teacher_logits, Tensor? mask, "
        "int divergence, float param, float temperature, int chunk_size, bool[3] grad_mask) "
        "-> (Tensor, Tensor, Tensor, Tensor)",
        tags);
  m.def("linear_divergence(Tensor hidden, Tensor weight, Tensor? bias, Tensor? teacher_hidden, "
        "Tensor? teacher_weight, Tensor? teacher_bias, Tensor? teacher_logits, Tensor? mask, "
        "int divergence, float param, float temperature, int chunk_size) -> Tensor",
        tags);
}

TORCH_LIBRARY_IMPL(kdbench, CPU, m) {
  m.impl("linear_divergence_fwd", &kdbench::linear_divergence_fwd_cpu);
}

TORCH_LIBRARY_IMPL(kdbench, Autograd, m) {
  m.impl("linear_divergence", &kdbench::linear_divergence_autograd);
}

TORCH_LIBRARY_IMPL(kdbench, CompositeExplicitAutograd, m) {
  m.impl("linear_divergence", &kdbench::linear_divergence_composite);
}

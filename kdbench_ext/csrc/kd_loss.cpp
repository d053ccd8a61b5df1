// kdbench fused KD losses: op schemas, CPU kernels' dispatch, autograd.
//
// Ops (namespace kdbench, see kdbench_ext/__init__.py for the fake kernels):
//   kd_kl_fwd(student, teacher, T, reduction, compute_grad) -> (loss, grad)
//       the fused kernel: loss and, in the same pass, d loss / d student.
//   kd_kl_loss(student, teacher, T, reduction) -> loss
//       what users call: autograd saves the gradient kd_kl_fwd wrote and the
//       backward only scales it by grad_output.
//   mse_fwd(x, y, compute_grad) -> (loss, grad), feature_mse(x, y) -> loss
//       the same for mean((x - y)^2).
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/Allocator.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "kd_autograd.h"
#include "kd_loss.h"
#include "kd_loss_cpu.h"

namespace kdbench {

// ---------------------------------------------------------------------------
// Argument checks and shared helpers
// ---------------------------------------------------------------------------

static bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

void check_kl_args(const at::Tensor& s, const at::Tensor& t, double temperature,
                   int64_t reduction, const char* op) {
  TORCH_CHECK(s.dim() >= 1, "kdbench::", op, ": logits need at least one dimension (classes)");
  TORCH_CHECK(s.sizes() == t.sizes(), "kdbench::", op,
              ": student and teacher logits differ in shape: ", s.sizes(), " vs ", t.sizes());
  TORCH_CHECK(s.scalar_type() == t.scalar_type(), "kdbench::", op,
              ": student and teacher logits differ in dtype: ", s.scalar_type(), " vs ",
              t.scalar_type());
  TORCH_CHECK(supported_dtype(s.scalar_type()), "kdbench::", op,
              ": unsupported dtype ", s.scalar_type(), " (float32, float64, bfloat16, float16)");
  TORCH_CHECK(s.device() == t.device(), "kdbench::", op,
              ": student and teacher logits are on different devices: ", s.device(), " vs ",
              t.device());
  TORCH_CHECK(s.size(-1) > 0, "kdbench::", op, ": the class dimension is empty");
  TORCH_CHECK(temperature > 0.0 && std::isfinite(temperature), "kdbench::", op,
              ": temperature must be a positive finite number, got ", temperature);
  TORCH_CHECK(reduction == kNone || reduction == kBatchMean || reduction == kSum, "kdbench::", op,
              ": reduction code must be 0 (none), 1 (batchmean) or 2 (sum), got ", reduction);
}

void check_mse_args(const at::Tensor& x, const at::Tensor& y, const char* op) {
  TORCH_CHECK(x.sizes() == y.sizes(), "kdbench::", op, ": inputs differ in shape: ", x.sizes(),
              " vs ", y.sizes());
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "kdbench::", op, ": inputs differ in dtype: ",
              x.scalar_type(), " vs ", y.scalar_type());
  TORCH_CHECK(supported_dtype(x.scalar_type()), "kdbench::", op, ": unsupported dtype ",
              x.scalar_type());
  TORCH_CHECK(x.device() == y.device(), "kdbench::", op, ": inputs are on different devices");
}

at::Tensor as_rows(const at::Tensor& x, int64_t rows, int64_t cols) {
  at::Tensor r = x.reshape({rows, cols});
  if (cols > 1 && r.stride(1) != 1) r = r.contiguous();
  return r;
}

#if defined(__linux__)
namespace {
constexpr size_t kHugePage = size_t(2) << 20;
// glibc serves blocks up to 32 MiB (its largest mmap threshold) from the heap and
// reuses them, so only larger ones come fresh from the kernel, page faults and
// all, on every call.  Those go through GradBufferPool.
constexpr size_t kPoolMinBytes = size_t(32) << 20;

size_t env_mib(const char* name, size_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return static_cast<size_t>(std::strtoull(v, nullptr, 10));
}

// Large gradient buffers: backed by transparent huge pages (a fresh 512 MiB
// buffer then costs 256 page faults instead of 131072), and kept for reuse
// when freed, up to KDBENCH_EXT_CPU_CACHE_MB (default 1024; 0 keeps none), so a
// training loop that asks for the same size every step touches no new page.
// Like PyTorch's CUDA caching allocator, in miniature: exact sizes, LIFO.
class GradBufferPool final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    const size_t len = std::max<size_t>((n + kHugePage - 1) / kHugePage * kHugePage, kHugePage);
    void* p = take(len);
    if (p == nullptr) {
      TORCH_CHECK(posix_memalign(&p, kHugePage, len) == 0 && p != nullptr,
                  "kdbench: out of memory allocating ", n, " bytes");
      madvise(p, len, MADV_HUGEPAGE);  // a hint; failure only costs speed
    }
    return {p, new Block{p, len}, &release, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }

  static GradBufferPool& get() {
    static GradBufferPool* pool = new GradBufferPool();  // never destroyed: frees at exit race
    return *pool;
  }

 private:
  struct Block {
    void* ptr;
    size_t len;
  };

  GradBufferPool() : cap_(env_mib("KDBENCH_EXT_CPU_CACHE_MB", 1024) << 20) {}

  void* take(size_t len) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = free_.rbegin(); it != free_.rend(); ++it) {
      if (it->len == len) {
        void* p = it->ptr;
        cached_ -= len;
        free_.erase(std::next(it).base());
        return p;
      }
    }
    return nullptr;
  }

  void give_back(Block* b) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + b->len <= cap_) {
        free_.push_back(*b);
        cached_ += b->len;
        delete b;
        return;
      }
    }
    std::free(b->ptr);
    delete b;
  }

  static void release(void* ctx) { get().give_back(static_cast<Block*>(ctx)); }

  std::mutex mu_;
  std::vector<Block> free_;
  size_t cached_ = 0;
  const size_t cap_;
};
}  // namespace
#endif

at::Tensor alloc_grad(const at::Tensor& like) {
#if defined(__linux__)
  if (like.device().is_cpu() &&
      static_cast<size_t>(like.numel()) * like.element_size() >= kPoolMinBytes) {
    return at::Tensor(at::detail::empty_generic(like.sizes(), &GradBufferPool::get(),
                                                c10::DispatchKeySet(c10::DispatchKey::CPU),
                                                like.scalar_type(), c10::MemoryFormat::Contiguous));
  }
#endif
  return at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
}

at::Tensor finalize_kl(const at::Tensor& row_kl, double temperature, int64_t reduction,
                       const at::Tensor& s) {
  const double t2 = temperature * temperature;
  if (reduction == kNone) {
    return row_kl.mul(t2).to(s.scalar_type()).view(s.sizes().slice(0, s.dim() - 1));
  }
  const int64_t rows = row_kl.numel();
  const double scale = reduction == kBatchMean ? t2 / static_cast<double>(rows) : t2;
  return row_kl.sum().mul(scale).to(s.scalar_type());
}

// ---------------------------------------------------------------------------
// CPU: instruction-set dispatch
// ---------------------------------------------------------------------------
namespace {

constexpr int64_t kGrainElems = 32768;  // elements per task: tiny inputs stay on one thread
constexpr int64_t kMseBlock = 16384;    // fixed blocks: the sum does not depend on threads
const char* const kIsaNames[3] = {"default", "avx2", "avx512"};

// The best kernels this build and this CPU support, as ATen decides for
// itself (at::get_cpu_capability honours ATEN_CPU_CAPABILITY).
int best_isa();

// Each ISA's get_kernels is compiled for that ISA (the compiler may fill the
// table with its wide stores), so it is called only where the CPU has it: on
// an AVX2-only CPU, calling the AVX512 one died with SIGILL.
const std::array<cpu::IsaKernels, 3>& isa_tables() {
  static const std::array<cpu::IsaKernels, 3> tables = [] {
    std::array<cpu::IsaKernels, 3> t{};
    cpu::isa_default::get_kernels(&t[0]);
    t[1] = t[0];
    t[2] = t[0];
    if (best_isa() >= 1) cpu::isa_avx2::get_kernels(&t[1]);
    if (best_isa() >= 2) cpu::isa_avx512::get_kernels(&t[2]);
    return t;
  }();
  return tables;
}

int best_isa() {
  static const int best = [] {
    const std::string cap = at::get_cpu_capability();
    cpu::IsaKernels probe{};
    if (cap == "AVX512" && cpu::isa_avx512::get_kernels(&probe)) return 2;
    if ((cap == "AVX512" || cap == "AVX2") && cpu::isa_avx2::get_kernels(&probe)) return 1;
    return 0;
  }();
  return best;
}

std::atomic<int> g_isa_override{-1};

int active_isa() {
  const int o = g_isa_override.load(std::memory_order_relaxed);
  return o >= 0 ? o : best_isa();
}

const cpu::IsaKernels& active_kernels() { return isa_tables()[active_isa()]; }

int dtype_index(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cpu::kF32;
    case at::kDouble: return cpu::kF64;
    case at::kBFloat16: return cpu::kBF16;
    case at::kHalf: return cpu::kF16;
    default: TORCH_CHECK(false, "kdbench: unsupported dtype ", t);
  }
}

std::string cpu_isa() { return kIsaNames[active_isa()]; }

// Selects the CPU kernels ("default", "avx2", "avx512" or "auto"); returns the
// previous choice.  For tests and benchmarks.
std::string set_cpu_isa(std::string name) {
  const std::string prev = cpu_isa();
  if (name == "auto") {
    g_isa_override.store(-1);
    return prev;
  }
  int want = -1;
  for (int i = 0; i < 3; ++i) {
    if (name == kIsaNames[i]) want = i;
  }
  TORCH_CHECK(want >= 0, "kdbench: unknown CPU ISA '", name, "' (default, avx2, avx512, auto)");
  TORCH_CHECK(want <= best_isa(), "kdbench: CPU ISA '", name, "' is not available here (best: ",
              kIsaNames[best_isa()], ")");
  g_isa_override.store(want);
  return prev;
}

bool has_cuda() {
#ifdef KDBENCH_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// ---------------------------------------------------------------------------
// CPU kernels of kd_kl_fwd and mse_fwd
// ---------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> kd_kl_fwd_cpu(const at::Tensor& s, const at::Tensor& t,
                                                 double temperature, int64_t reduction,
                                                 bool compute_grad) {
  check_kl_args(s, t, temperature, reduction, "kd_kl_fwd");
  const int64_t C = s.size(-1);
  const int64_t N = s.numel() / C;
  const at::Tensor s2 = as_rows(s, N, C);
  const at::Tensor t2 = as_rows(t, N, C);
  at::Tensor grad = compute_grad ? alloc_grad(s) : at::empty({0}, s.options());
  at::Tensor row_kl = at::empty({N}, s.options().dtype(at::kDouble));

  cpu::KlArgs args;
  args.s = s2.const_data_ptr();
  args.t = t2.const_data_ptr();
  args.grad = compute_grad ? grad.mutable_data_ptr() : nullptr;
  args.row_kl = row_kl.mutable_data_ptr<double>();
  args.lds = s2.stride(0);
  args.ldt = t2.stride(0);
  args.C = C;
  args.inv_t = 1.0 / temperature;
  args.gscale = reduction == kBatchMean ? temperature / static_cast<double>(N) : temperature;

  const cpu::KlRowsFn fn = active_kernels().kl[dtype_index(s.scalar_type())];
  const int64_t grain = std::max<int64_t>(1, kGrainElems / C);
  at::parallel_for(0, N, grain, [&](int64_t b, int64_t e) { fn(args, b, e); });

  at::Tensor loss;
  if (reduction == kNone) {
    loss = finalize_kl(row_kl, temperature, reduction, s);
  } else {
    // Sequential fp64 sum: the same result whatever the number of threads.
    const double* r = row_kl.const_data_ptr<double>();
    double total = 0.0;
    for (int64_t i = 0; i < N; ++i) total += r[i];
    const double t2s = temperature * temperature;
    total *= reduction == kBatchMean ? t2s / static_cast<double>(N) : t2s;
    loss = at::scalar_tensor(total, s.options());
  }
  return {loss, grad};
}

std::tuple<at::Tensor, at::Tensor> mse_fwd_cpu(const at::Tensor& x, const at::Tensor& y,
                                               bool compute_grad) {
  check_mse_args(x, y, "mse_fwd");
  const at::Tensor xc = x.contiguous();
  const at::Tensor yc = y.contiguous();
  const int64_t n = x.numel();
  at::Tensor grad = compute_grad ? alloc_grad(x) : at::empty({0}, x.options());

  cpu::MseArgs args;
  args.x = xc.const_data_ptr();
  args.y = yc.const_data_ptr();
  args.grad = compute_grad ? grad.mutable_data_ptr() : nullptr;
  args.n = n;
  args.gscale = 2.0 / static_cast<double>(n);

  const cpu::MseRangeFn fn = active_kernels().mse[dtype_index(x.scalar_type())];
  const int64_t nblocks = (n + kMseBlock - 1) / kMseBlock;
  std::vector<double> partial(static_cast<size_t>(nblocks), 0.0);
  at::parallel_for(0, nblocks, std::max<int64_t>(1, kGrainElems / kMseBlock),
                   [&](int64_t b, int64_t e) {
                     for (int64_t k = b; k < e; ++k) {
                       partial[k] = fn(args, k * kMseBlock, std::min(n, (k + 1) * kMseBlock));
                     }
                   });
  double total = 0.0;
  for (double p : partial) total += p;
  return {at::scalar_tensor(total / static_cast<double>(n), x.options()), grad};
}

// ---------------------------------------------------------------------------
// Autograd
// ---------------------------------------------------------------------------

struct KdKlBackward : public ag::Node {
  SavedGrad saved;
  int64_t reduction = kBatchMean;

  std::string name() const override { return "KdKlLossBackward"; }
  void will_release_variables() override { saved.releasing = true; }
  void release_variables() override { saved.grad.reset(); }

  ag::variable_list apply(ag::variable_list&& grads) override {
    const at::Tensor& go = grads[0];
    if (!go.defined()) return {at::Tensor()};
    return {saved.scaled(reduction == kNone ? go.unsqueeze(-1) : go, "kd_kl_loss")};
  }
};

struct FeatureMseBackward : public ag::Node {
  SavedGrad saved;

  std::string name() const override { return "FeatureMseBackward"; }
  void will_release_variables() override { saved.releasing = true; }
  void release_variables() override { saved.grad.reset(); }

  ag::variable_list apply(ag::variable_list&& grads) override {
    const at::Tensor& go = grads[0];
    if (!go.defined()) return {at::Tensor(), at::Tensor()};
    const bool need_x = task_should_compute_output(0);
    const bool need_y = task_should_compute_output(1);
    if (!need_x && !need_y) return {at::Tensor(), at::Tensor()};
    at::Tensor base = saved.scaled(go, "feature_mse");  // d loss / d x
    at::Tensor gy;
    if (need_y) gy = need_x ? at::neg(base) : base.neg_();
    return {need_x ? base : at::Tensor(), gy};
  }
};

const c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, double, int64_t, bool)>&
kd_kl_fwd_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("kdbench::kd_kl_fwd", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(
                                 const at::Tensor&, const at::Tensor&, double, int64_t, bool)>();
  return op;
}

const c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&,
                                                                  const at::Tensor&, bool)>&
mse_fwd_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("kdbench::mse_fwd", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, bool)>();
  return op;
}

at::Tensor kd_kl_loss_autograd(const at::Tensor& s, const at::Tensor& t, double temperature,
                               int64_t reduction) {
  const bool grad_mode = at::GradMode::is_enabled();
  TORCH_CHECK(!(grad_mode && t.requires_grad()),
              "kdbench::kd_kl_loss: the teacher logits require grad, but the fused op only "
              "differentiates the student; detach the teacher, or call "
              "kdbench.losses.kd_kl_loss, which uses the PyTorch reference in that case");
  const bool need = grad_mode && s.requires_grad();
  at::Tensor loss, grad;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(loss, grad) = kd_kl_fwd_op().call(s, t, temperature, reduction, need);
  }
  if (need) {
    auto node = make_node<KdKlBackward>();
    node->set_next_edges(ag::collect_next_edges(s));
    node->saved.grad = std::move(grad);
    node->reduction = reduction;
    ag::set_history(loss, std::move(node));
  }
  return loss;
}

at::Tensor kd_kl_loss_composite(const at::Tensor& s, const at::Tensor& t, double temperature,
                                int64_t reduction) {
  return std::get<0>(kd_kl_fwd_op().call(s, t, temperature, reduction, false));
}

at::Tensor feature_mse_autograd(const at::Tensor& x, const at::Tensor& y) {
  const bool need = ag::compute_requires_grad(x, y);
  at::Tensor loss, grad;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(loss, grad) = mse_fwd_op().call(x, y, need);
  }
  if (need) {
    auto node = make_node<FeatureMseBackward>();
    node->set_next_edges(ag::collect_next_edges(x, y));
    node->saved.grad = std::move(grad);
    ag::set_history(loss, std::move(node));
  }
  return loss;
}

at::Tensor feature_mse_composite(const at::Tensor& x, const at::Tensor& y) {
  return std::get<0>(mse_fwd_op().call(x, y, false));
}

}  // namespace

void div_rows_cpu(const at::Tensor& zs, const at::Tensor& zt, const at::Tensor& row_loss,
                  const DivParams& p, bool want_grad) {
  const int64_t rows = zs.size(0);
  const int64_t C = zs.size(1);
  cpu::DivArgs args;
  args.s = zs.mutable_data_ptr();
  args.t = zt.const_data_ptr();
  args.row_loss = row_loss.mutable_data_ptr<double>();
  args.ldt = zt.stride(0);
  args.C = C;
  args.kind = p.kind;
  args.param = p.param;
  args.inv_t = p.inv_t;
  args.gscale = p.gscale;
  args.want_grad = want_grad;
  const cpu::DivRowsFn fn = active_kernels().div[dtype_index(zs.scalar_type())];
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrainElems / C),
                   [&](int64_t b, int64_t e) { fn(args, b, e); });
}

}  // namespace kdbench

TORCH_LIBRARY(kdbench, m) {
  const std::vector<at::Tag> tags = {at::Tag::pt2_compliant_tag};
  m.def("kd_kl_fwd(Tensor student, Tensor teacher, float temperature, int reduction, "
        "bool compute_grad) -> (Tensor, Tensor)",
        tags);
  m.def("kd_kl_loss(Tensor student, Tensor teacher, float temperature, int reduction) -> Tensor",
        tags);
  m.def("mse_fwd(Tensor x, Tensor y, bool compute_grad) -> (Tensor, Tensor)", tags);
  m.def("feature_mse(Tensor x, Tensor y) -> Tensor", tags);
  m.def("_has_cuda() -> bool", &kdbench::has_cuda);
  m.def("_cpu_isa() -> str", &kdbench::cpu_isa);
  m.def("_set_cpu_isa(str isa) -> str", &kdbench::set_cpu_isa);
}

TORCH_LIBRARY_IMPL(kdbench, CPU, m) {
  m.impl("kd_kl_fwd", &kdbench::kd_kl_fwd_cpu);
  m.impl("mse_fwd", &kdbench::mse_fwd_cpu);
}

TORCH_LIBRARY_IMPL(kdbench, Autograd, m) {
  m.impl("kd_kl_loss", &kdbench::kd_kl_loss_autograd);
  m.impl("feature_mse", &kdbench::feature_mse_autograd);
}

TORCH_LIBRARY_IMPL(kdbench, CompositeExplicitAutograd, m) {
  m.impl("kd_kl_loss", &kdbench::kd_kl_loss_composite);
  m.impl("feature_mse", &kdbench::feature_mse_composite);
}

// Importing kdbench_ext._C loads this library, which runs the registrations
// above; the module itself is empty.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "kdbench fused loss ops (torch.ops.kdbench.*)", -1, nullptr,
      nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module_def);
}

// Autograd helpers shared by the kdbench ops' C++ autograd kernels (host code only).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <torch/csrc/autograd/function.h>

#include <memory>
#include <type_traits>

namespace kdbench {

namespace ag = torch::autograd;

// Creates an autograd node; torch >= 2.12 holds nodes in intrusive_ptr, older
// releases in shared_ptr with deleteNode (found by ADL, only in that branch).
template <typename N>
inline auto make_node() {
  if constexpr (std::is_base_of_v<c10::intrusive_ptr_target, ag::Node>) {
    return c10::make_intrusive<N>();
  } else {
    return std::shared_ptr<N>(new N(), [](N* p) { deleteNode(p); });
  }
}

// True for a plain one-element CPU tensor holding exactly 1 (read from host
// memory: the tensor already lives there, so nothing synchronises).
inline bool is_cpu_one(const at::Tensor& g) {
  if (!g.device().is_cpu() || g.numel() != 1 || at::isTensorSubclassLike(g)) return false;
  double v = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g.scalar_type(), "kdbench_is_one", [&] {
    v = static_cast<double>(*g.const_data_ptr<scalar_t>());
  });
  return v == 1.0;
}

// Scales a gradient saved by the forward.  When the engine has announced that
// this node's saved state is about to be released (no retain_graph) and no one
// else holds the buffer, scale it in place and hand it on instead of
// allocating a new one; with grad_output == 1 on the CPU nothing is done.
struct SavedGrad {
  at::Tensor grad;
  bool releasing = false;

  bool can_steal(const at::Tensor& go) const {
    return releasing && grad.use_count() == 1 && !at::isTensorSubclassLike(grad) &&
           !at::isTensorSubclassLike(go) && !grad.is_inference();
  }

  at::Tensor scaled(const at::Tensor& scale, const char* op) {
    TORCH_CHECK(grad.defined(), "kdbench::", op,
                ": trying to backward through the graph a second time, but the saved gradient "
                "has already been freed; specify retain_graph=True the first time");
    TORCH_CHECK(!at::GradMode::is_enabled(), "kdbench::", op,
                ": the fused op does not support double backward (create_graph=True); "
                "set KDBENCH_EXT=0 to use the PyTorch reference");
    if (can_steal(scale)) {
      at::Tensor out = std::move(grad);
      grad = at::Tensor();
      if (!is_cpu_one(scale)) out.mul_(scale);
      return out;
    }
    return grad * scale;
  }
};

}  // namespace kdbench

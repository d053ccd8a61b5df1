#!/usr/bin/env bash
# Compile and link kdbench_ext with its CUDA kernels into a throwaway folder, then
# load the library to check that every symbol resolves.  Nothing runs on a GPU, so
# this works (and catches CUDA build errors) on a machine without one.  Needs a CUDA
# build of torch and a CUDA toolkit matching it (CUDA_HOME, default /usr/local/cuda).
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

export KDBENCH_CUDA=1
export KDBENCH_EXT_REQUIRED=1  # no silent fallback to the reference losses here
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export MAX_JOBS="${MAX_JOBS:-2}"

echo "cuda-compile-check: CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
start=$(date +%s)
if ! python setup.py -q build_ext --build-temp "$tmp/temp" --build-lib "$tmp/lib" > "$tmp/build.log" 2>&1; then
    grep -E "error|Error" "$tmp/build.log" | head -40 || true
    echo "--- last lines of the build log ---"
    tail -40 "$tmp/build.log"
    echo "cuda-compile-check: FAILED (compile or link)"
    exit 1
fi
so="$(find "$tmp/lib" -name '_C*.so' | head -n 1)"
if [ -z "$so" ]; then
    echo "cuda-compile-check: FAILED (no library built)"
    exit 1
fi
echo "cuda-compile-check: built $(basename "$so") in $(( $(date +%s) - start )) s"

# Every requested architecture must be in the fat binary.
if command -v "$CUDA_HOME/bin/cuobjdump" > /dev/null; then
    elves="$("$CUDA_HOME/bin/cuobjdump" --list-elf "$so" || true)"
    IFS=';' read -ra archs <<< "$TORCH_CUDA_ARCH_LIST"
    for arch in "${archs[@]}"; do
        sm="sm_${arch//[^0-9]/}"
        if ! grep -q "$sm" <<< "$elves"; then
            echo "cuda-compile-check: FAILED (no $sm code in the library)"
            exit 1
        fi
    done
fi

# Load it: unresolved symbols fail here.  The CUDA kernels must be registered.
python - "$so" <<'PY'
import sys
import torch
torch.ops.load_library(sys.argv[1])
assert torch.ops.kdbench._has_cuda(), "library built without its CUDA kernels"
assert torch._C._dispatch_has_kernel_for_dispatch_key("kdbench::kd_kl_fwd", "CUDA")
assert torch._C._dispatch_has_kernel_for_dispatch_key("kdbench::mse_fwd", "CUDA")
assert torch._C._dispatch_has_kernel_for_dispatch_key("kdbench::linear_divergence_fwd", "CUDA")
print("cuda-compile-check: library loads; CUDA kernels registered")
PY
echo "cuda-compile-check: OK"

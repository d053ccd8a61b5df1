"""Build kdbench's fused-loss extension (kdbench_ext._C); the package metadata is in pyproject.toml.

Without a working compiler the install goes on without the extension (one-line notice) and
kdbench.losses uses its PyTorch reference; KDBENCH_EXT_REQUIRED=1 makes a failed build an error
(CI sets it, so a broken kernel cannot hide behind the fallback).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
CSRC = HERE / "kdbench_ext" / "csrc"


def _truthy(value):
    return value.strip().lower() in ("1", "true", "yes", "on")


def _falsy(value):
    return value.strip().lower() in ("0", "false", "no", "off")


def _default_cuda_home():
    """Point CUDA_HOME at /usr/local/cuda when unset and a toolkit is there.

    Without it torch guesses from the nvcc on PATH, and a wrapper at
    /usr/local/bin/nvcc makes that guess /usr/local, where the link fails.
    """
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        if os.path.exists("/usr/local/cuda/bin/nvcc"):
            os.environ["CUDA_HOME"] = "/usr/local/cuda"


def _cuda_usable(torch, cuda_home):
    """(usable, reason): a CUDA build of torch and a matching toolkit at cuda_home."""
    if not torch.version.cuda:
        return False, "torch is a CPU-only build"
    if not cuda_home:
        return False, "no CUDA toolkit found (set CUDA_HOME)"
    home = Path(cuda_home)
    if not (home / "bin" / "nvcc").exists() or not (home / "include" / "cuda_runtime.h").exists():
        return False, f"CUDA_HOME={cuda_home} has no bin/nvcc and include/cuda_runtime.h"
    if not any((home / lib).glob("libcudart.so*") for lib in ("lib64", "lib")):
        return False, f"CUDA_HOME={cuda_home} has no libcudart"
    try:
        out = subprocess.run([str(home / "bin" / "nvcc"), "--version"], capture_output=True,
                             text=True, check=True).stdout
        nvcc_major = re.search(r"release (\d+)\.", out).group(1)
    except (OSError, subprocess.CalledProcessError, AttributeError):
        return False, f"could not run {home / 'bin' / 'nvcc'} --version"
    if nvcc_major != torch.version.cuda.split(".")[0]:
        return False, f"nvcc is CUDA {nvcc_major}.x but torch was built with CUDA {torch.version.cuda}"
    return True, f"CUDA toolkit at {cuda_home}"


def extension_build():
    """Return (ext_modules, cmdclass) for the compiled loss op; empty while there are no sources.

    The C++ (CPU) op is always built.  The CUDA kernels are added when CUDA is usable (a
    CUDA build of torch and a matching toolkit at CUDA_HOME), or when KDBENCH_CUDA=1 forces
    them; KDBENCH_CUDA=0 skips them.  Without a visible GPU and TORCH_CUDA_ARCH_LIST, the
    CUDA code is built for sm_80 and sm_90 (+PTX).
    """
    sources = sorted(str(p.relative_to(HERE)) for p in CSRC.glob("*.cpp"))
    if not sources:
        return [], {}
    if "develop" in sys.argv[1:]:
        # pip takes the legacy `setup.py develop` path when the `wheel` package is installed
        # and there is no pyproject.toml; setuptools' develop then reruns pip in a subprocess
        # with build isolation, where torch is missing.  Keep that subprocess in this
        # environment, as the --no-build-isolation the install command asked for.
        os.environ.setdefault("PIP_NO_BUILD_ISOLATION", "0")
    cuda_sources = sorted(str(p.relative_to(HERE)) for p in CSRC.glob("*.cu"))
    want = os.environ.get("KDBENCH_CUDA", "")
    if cuda_sources and not _falsy(want):
        _default_cuda_home()
    import torch
    from torch.utils import cpp_extension
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    if cuda_sources and not _falsy(want) and os.environ.get("CUDA_HOME"):
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]  # in case it was imported before
    use_cuda = False
    if cuda_sources and _truthy(want):
        use_cuda, reason = True, "KDBENCH_CUDA=1"
    elif cuda_sources and not _falsy(want):
        use_cuda, reason = _cuda_usable(torch, cpp_extension.CUDA_HOME)
    else:
        reason = "KDBENCH_CUDA=0" if cuda_sources else "no CUDA sources"
    print(f"kdbench_ext: CUDA kernels {'on' if use_cuda else 'off'} ({reason})")

    # -ffp-contract=off: the kernels rely on a*b - c*d being exactly 0 when a*b == c*d.
    cxx = ["-O3", "-ffp-contract=off"]
    link = []
    if sys.platform.startswith("linux"):
        cxx.append("-fopenmp")  # at::parallel_for runs on torch's OpenMP threads
        link.append("-fopenmp")
    if use_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.device_count() == 0:
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        ext = CUDAExtension(
            "kdbench_ext._C",
            sources + cuda_sources,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            extra_link_args=link,
            define_macros=[("KDBENCH_WITH_CUDA", "1")],
        )
    else:
        ext = CppExtension("kdbench_ext._C", sources, extra_compile_args={"cxx": cxx},
                           extra_link_args=link)
    return [ext], {"build_ext": optional_build(BuildExtension.with_options(use_ninja=True))}


def optional_build(build_ext):
    """``build_ext`` that, when compiling fails, installs without the op (unless KDBENCH_EXT_REQUIRED=1)."""

    class OptionalBuildExtension(build_ext):
        def run(self):
            try:
                super().run()
            except Exception as exc:  # no compiler, a broken toolchain, ninja failing: all the same to the user
                if _truthy(os.environ.get("KDBENCH_EXT_REQUIRED", "")):
                    raise
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
                print(f"kdbench_ext: NOTICE: the fused loss op was not compiled ({reason}); kdbench will use its "
                      "PyTorch reference losses (with a compiler, reinstall with --no-cache-dir)", file=sys.stderr)

    return OptionalBuildExtension


ext_modules, cmdclass = extension_build()

setup(ext_modules=ext_modules, cmdclass=cmdclass)

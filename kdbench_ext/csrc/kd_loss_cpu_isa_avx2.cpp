// AVX2+FMA build of the CPU kernels, used only when at::get_cpu_capability()
// reports AVX2 or better.  The target pragma must come before any include so
// that every function in this translation unit, the at::vec intrinsics
// included, is compiled for AVX2; no other file is.  This unit has no static
// initialisers (see ATen's note "Do not compile initializers with AVX").
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(KDBENCH_NO_ISA_DISPATCH)
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,popcnt")
// GCC's target pragma does not define the ISA macros that headers test
// (sleef.h, at::vec); define them for this unit only.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#ifndef __BMI__
#define __BMI__ 1
#endif
#ifndef __BMI2__
#define __BMI2__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define KDBENCH_ISA_NS isa_avx2
#include "kd_loss_cpu_kernels.h"
#else
#include "kd_loss_cpu.h"
namespace kdbench { namespace cpu { namespace isa_avx2 {
bool get_kernels(IsaKernels*) { return false; }
}}}  // namespace kdbench::cpu::isa_avx2
#endif

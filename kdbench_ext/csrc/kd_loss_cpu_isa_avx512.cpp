// AVX512 build of the CPU kernels (F, BW, VL, DQ, as ATen's AVX512 capability),
// used only when at::get_cpu_capability() reports AVX512.  See
// kd_loss_cpu_isa_avx2.cpp for why the pragma comes first.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(KDBENCH_NO_ISA_DISPATCH)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,popcnt")
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
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define KDBENCH_ISA_NS isa_avx512
#include "kd_loss_cpu_kernels.h"
#else
#include "kd_loss_cpu.h"
namespace kdbench { namespace cpu { namespace isa_avx512 {
bool get_kernels(IsaKernels*) { return false; }
}}}  // namespace kdbench::cpu::isa_avx512
#endif

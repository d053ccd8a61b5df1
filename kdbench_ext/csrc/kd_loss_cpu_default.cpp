// Baseline build of the CPU kernels: runs on any CPU (at::vec's DEFAULT flavour).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#define KDBENCH_ISA_NS isa_default
#include "kd_loss_cpu_kernels.h"

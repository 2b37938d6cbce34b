// The micro-kernels on 16-byte vectors for the compiler's default target (SSE2 on x86-64,
// NEON on AArch64): the baseline for every CPU.
#define SCC_ISA portable
#define SCC_TARGET
#define SCC_VECTOR_BYTES 16
#define SCC_ROWS_MAX 6
#define SCC_ROWS_VECTORS 2
#define SCC_GEMM_ACCUMULATORS 12
#define SCC_GEMM_VECTORS 3
#include "kernels_impl.h"

// The micro-kernels compiled for AVX2 + FMA (x86-64 only; used when the CPU has them).
#if defined(__x86_64__)
#define SCC_ISA avx2
#define SCC_TARGET __attribute__((target("avx2,fma")))
#define SCC_VECTOR_BYTES 32
#define SCC_ROWS_MAX 6
#define SCC_ROWS_VECTORS 2
#define SCC_GEMM_ACCUMULATORS 12
#define SCC_GEMM_VECTORS 3
#include "kernels_impl.h"
#endif

// The micro-kernels compiled for AVX-512 (x86-64 only; used when the CPU has it).
#if defined(__x86_64__)
#define SCC_ISA avx512
#define SCC_TARGET __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))
#define SCC_VECTOR_BYTES 64
#define SCC_ROWS_MAX 8
#define SCC_ROWS_VECTORS 3
#define SCC_NARROW 1
#define SCC_GEMM_ACCUMULATORS 24
#define SCC_GEMM_VECTORS 6
#include "kernels_impl.h"
#endif

// Picks the micro-kernels for this CPU once: the widest instruction set that both the CPU
// supports and ATen's capability (ATEN_CPU_CAPABILITY) allows.
#include "kernels.h"

#include <ATen/Version.h>

#include <string>

namespace scc_native {

#define SCC_DECLARE_ISA(name)                  \
  namespace name {                             \
  const Kernels<float>& float_kernels();       \
  const Kernels<double>& double_kernels();     \
  }
SCC_DECLARE_ISA(portable)
#if defined(__x86_64__)
SCC_DECLARE_ISA(avx2)
SCC_DECLARE_ISA(avx512)
#endif
#undef SCC_DECLARE_ISA

namespace {

enum class Isa { portable, avx2, avx512 };

Isa detect() {
#if defined(__x86_64__)
  const std::string aten = at::get_cpu_capability();
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  if (avx512 && aten == "AVX512") return Isa::avx512;
  if (avx2 && (aten == "AVX512" || aten == "AVX2")) return Isa::avx2;
#endif
  return Isa::portable;
}

Isa chosen() {
  static const Isa isa = detect();
  return isa;
}

}  // namespace

template <>
const Kernels<float>& kernels<float>() {
  switch (chosen()) {
#if defined(__x86_64__)
    case Isa::avx512: return avx512::float_kernels();
    case Isa::avx2: return avx2::float_kernels();
#endif
    default: return portable::float_kernels();
  }
}

template <>
const Kernels<double>& kernels<double>() {
  switch (chosen()) {
#if defined(__x86_64__)
    case Isa::avx512: return avx512::double_kernels();
    case Isa::avx2: return avx2::double_kernels();
#endif
    default: return portable::double_kernels();
  }
}

}  // namespace scc_native

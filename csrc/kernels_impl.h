// The micro-kernels, written once on the compiler's portable vectors (GCC/Clang
// `vector_size`) and compiled once per instruction set by isa_*.cpp, which define:
//   SCC_ISA            namespace of this copy (avx512, avx2, portable)
//   SCC_TARGET         function attribute naming the instruction set (or nothing)
//   SCC_VECTOR_BYTES   bytes per vector register
//   SCC_ROWS_MAX       rows of the rows() register tile
//   SCC_ROWS_VECTORS   pixel vectors of the rows() register tile
//   SCC_GEMM_ACCUMULATORS  vector accumulators of the window_gemm() register tile
//   SCC_GEMM_VECTORS   output vectors of the window_gemm() register tile
//   SCC_NARROW         (optional) build narrow(): AVX-512 only, it needs a two-register permute
// No include guard: included once per instruction set. Everything but the table accessors
// has internal linkage, so no code compiled for one instruction set is shared with another.
//
// rows(): a register tile of R rows x NV pixel vectors; per step m it loads NV vectors of
// B_m and broadcasts one A(r, m) per row: R * NV fused multiply-adds for NV + R loads.
// dots(): a tile of R x C dot products over pixels, each a vector accumulator; R * C equals
// the vector length, so one transposing reduction turns the tile into one vector of sums.
// epilogue(): the forward's residual add and activation on finished rows, vector by vector.
// window_gemm(): channels_last, one window's outputs for a block of pixels: R broadcast input
// channels and J weight vectors make R * J multiply-adds. interleave(): those outputs of cd
// windows back into output order (log2(cd) rounds of zips per cd vectors), with the epilogue.
// quad_dots(): channels_last, one window's few outputs as dot products over 4-channel groups
// (broadcasts of 4 input channels times J weight vectors, the groups summed at the end).
// narrow(): channels_last rows of a layer with at most 32 input channels, vectorised along
// output channels (AVX-512 permutes; see NarrowArgs). stack() and stacked_gemm(): channels_last
// expansions, vectorised along consecutive outputs of several windows (see StackedGemmArgs).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__clang__)
#define SCC_UNROLL _Pragma("unroll")
#else
#define SCC_UNROLL _Pragma("GCC unroll 16")
#endif
#define SCC_INLINE inline __attribute__((always_inline))
#define SCC_NOINLINE __attribute__((noinline))

namespace scc_native {
namespace SCC_ISA {
namespace {

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(SCC_VECTOR_BYTES)));
  static constexpr int lanes = SCC_VECTOR_BYTES / static_cast<int>(sizeof(T));
};

template <typename V, typename T>
SCC_TARGET SCC_INLINE V load(const T* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
SCC_TARGET SCC_INLINE void store(T* p, V v) {
  __builtin_memcpy(p, &v, sizeof(V));
}

// s - 0 is s exactly (the compiler folds it into one broadcast; s + 0 would not be, for -0).
template <typename V, typename T>
SCC_TARGET SCC_INLINE V splat(T s) {
  return s - V{};
}

// Lane l of half_shuffle<B, Hi>(a, b): the vectors are read as blocks of B lanes; each
// block of the result holds the first (Hi: second) half of that block of a, then of b.
// It is one step of a block transpose, and of a transposing reduction.
constexpr int half_index(int lanes, int block, bool hi, int l) {
  const int base = (l / block) * block, within = l % block, half = block / 2;
  const int shift = hi ? half : 0;
  return within < half ? base + within + shift : lanes + base + within - half + shift;
}

template <int B, bool Hi, typename V, int... I>
SCC_TARGET SCC_INLINE V half_shuffle(V a, V b, std::integer_sequence<int, I...>) {
  return __builtin_shufflevector(a, b, half_index(sizeof...(I), B, Hi, I)...);
}

// In place: v[i] lane c becomes v[c] lane i (L vectors of L lanes).
template <typename T, int H>
SCC_TARGET SCC_INLINE void transpose_step(typename Vec<T>::type* v) {
  constexpr int L = Vec<T>::lanes;
  using Seq = std::make_integer_sequence<int, L>;
  SCC_UNROLL
  for (int i = 0; i < L; ++i) {
    if (i & H) continue;
    const auto a = v[i], b = v[i + H];
    v[i] = half_shuffle<2 * H, false>(a, b, Seq{});
    v[i + H] = half_shuffle<2 * H, true>(a, b, Seq{});
  }
  if constexpr (H > 1) transpose_step<T, H / 2>(v);
}

template <typename T>
SCC_TARGET void to_tile(const T* const* src, T* dst, int64_t ld) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  V v[L];
  SCC_UNROLL
  for (int i = 0; i < L; ++i) v[i] = load<V>(src[i]);
  transpose_step<T, L / 2>(v);
  SCC_UNROLL
  for (int c = 0; c < L; ++c) store(dst + c * ld, v[c]);
}

template <typename T>
SCC_TARGET void from_tile(const T* src, int64_t ld, T* const* dst) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  V v[L];
  SCC_UNROLL
  for (int c = 0; c < L; ++c) v[c] = load<V>(src + c * ld);
  transpose_step<T, L / 2>(v);
  SCC_UNROLL
  for (int i = 0; i < L; ++i) store(dst[i], v[i]);
}

// -- rows ----------------------------------------------------------------------------------

template <typename T>
constexpr int kLineElems = 64 / sizeof(T);  // one cache line
template <typename T>
constexpr int kPrefetchElems = 512 / sizeof(T);  // how far ahead rows() prefetches B (bench/cpu_scc.py)

template <typename T, int R, int NV>
SCC_TARGET SCC_INLINE void rows_block(const T* const* ar, const int64_t* a_col, const T* b,
                                      const int64_t* b_row, int64_t depth, T* const* cr,
                                      const T* init, const uint8_t* accumulate, int64_t p) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  V acc[R][NV];
  SCC_UNROLL
  for (int r = 0; r < R; ++r) {
    if (accumulate && accumulate[r]) {
      SCC_UNROLL
      for (int j = 0; j < NV; ++j) acc[r][j] = load<V>(cr[r] + p + j * L);
    } else {
      const V start = splat<V>(init ? init[r] : T(0));
      SCC_UNROLL
      for (int j = 0; j < NV; ++j) acc[r][j] = start;
    }
  }
  for (int64_t m = 0; m < depth; ++m) {
    const T* bm = b + b_row[m] + p;
    // The B rows are hundreds of interleaved streams (one per input channel in NCHW), more
    // than the hardware prefetchers follow: ask for the lines this row reads next.
    SCC_UNROLL
    for (int j = 0; j < NV * L; j += kLineElems<T>) __builtin_prefetch(bm + kPrefetchElems<T> + j, 0, 3);
    V bv[NV];
    SCC_UNROLL
    for (int j = 0; j < NV; ++j) bv[j] = load<V>(bm + j * L);
    const int64_t col = a_col[m];
    SCC_UNROLL
    for (int r = 0; r < R; ++r) {
      const V av = splat<V>(ar[r][col]);
      SCC_UNROLL
      for (int j = 0; j < NV; ++j) acc[r][j] += av * bv[j];
    }
  }
  SCC_UNROLL
  for (int r = 0; r < R; ++r) {
    SCC_UNROLL
    for (int j = 0; j < NV; ++j) store(cr[r] + p + j * L, acc[r][j]);
  }
}

template <int R>
const uint8_t* accumulate_all() {
  static constexpr uint8_t ones[8] = {1, 1, 1, 1, 1, 1, 1, 1};
  static_assert(R <= 8);
  return ones;
}

template <typename T, int R>
SCC_TARGET void rows_fixed(const RowsArgs<T>& a) {
  constexpr int L = Vec<T>::lanes, NV = SCC_ROWS_VECTORS;
  const T* ar[R];
  T* cr[R];
  for (int r = 0; r < R; ++r) {
    ar[r] = a.a + a.a_row[r];
    cr[r] = a.c + a.c_row[r];
  }
  const uint8_t* everyone = accumulate_all<R>();
  const int64_t kc = a.depth_block > 0 ? a.depth_block : a.depth;
  for (int64_t k0 = 0; k0 < a.depth; k0 += kc) {  // later blocks add onto the rows
    const int64_t kn = kc < a.depth - k0 ? kc : a.depth - k0;
    const T* init = k0 == 0 ? a.init : nullptr;
    const uint8_t* acc = k0 == 0 ? a.accumulate : everyone;
    int64_t p = 0;
    for (; p + NV * L <= a.pixels; p += NV * L) {
      rows_block<T, R, NV>(ar, a.a_col + k0, a.b, a.b_row + k0, kn, cr, init, acc, p);
      if (a.ahead) a.ahead->step();
    }
    // The rest (< NV vectors): two vectors at once where they remain, then one.
    if constexpr (NV > 2) {
      if (p + 2 * L <= a.pixels) {
        rows_block<T, R, 2>(ar, a.a_col + k0, a.b, a.b_row + k0, kn, cr, init, acc, p);
        p += 2 * L;
      }
    }
    for (; p < a.pixels; p += L)
      rows_block<T, R, 1>(ar, a.a_col + k0, a.b, a.b_row + k0, kn, cr, init, acc, p);
  }
}

template <typename T, int R = SCC_ROWS_MAX>
void rows(const RowsArgs<T>& a, int n) {
  if (n == R) return rows_fixed<T, R>(a);
  if constexpr (R > 1) rows<T, R - 1>(a, n);
}

// -- dots ----------------------------------------------------------------------------------

template <typename T>
struct DotsTile {
  // R x C accumulators fill one vector after the reduction: R * C == lanes.
  static constexpr int lanes = Vec<T>::lanes;
  static constexpr int cols = lanes >= 4 ? 4 : lanes;
  static constexpr int rows = lanes / cols;
};

// v[0..n) -> lane l of v[0] holds the sum of the lanes of input bit_reverse(l) (n == lanes).
template <typename T, int B>
SCC_TARGET SCC_INLINE void reduce_step(typename Vec<T>::type* v, int n) {
  constexpr int L = Vec<T>::lanes;
  using Seq = std::make_integer_sequence<int, L>;
  SCC_UNROLL
  for (int i = 0; i < n / 2; ++i) {
    const auto a = v[2 * i], b = v[2 * i + 1];
    v[i] = half_shuffle<B, false>(a, b, Seq{}) + half_shuffle<B, true>(a, b, Seq{});
  }
  if constexpr (B > 2) reduce_step<T, B / 2>(v, n / 2);
}

constexpr int bit_reverse(int x, int bits) {
  int r = 0;
  for (int i = 0; i < bits; ++i) r |= ((x >> i) & 1) << (bits - 1 - i);
  return r;
}

template <typename T, int R, int C>
SCC_TARGET void dots_fixed(const DotsArgs<T>& a) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  const T* g[R];
  const T* x[C];
  for (int r = 0; r < R; ++r) g[r] = a.g + a.g_row[r];
  for (int c = 0; c < C; ++c) x[c] = a.x + a.x_row[c];
  V acc[R * C];
  SCC_UNROLL
  for (int t = 0; t < R * C; ++t) acc[t] = V{};
  for (int64_t p = 0; p < a.pixels; p += L) {
    if (p % kLineElems<T> == 0) {  // as in rows(): R + C row streams
      SCC_UNROLL
      for (int r = 0; r < R; ++r) __builtin_prefetch(g[r] + p + kPrefetchElems<T>, 0, 3);
      SCC_UNROLL
      for (int c = 0; c < C; ++c) __builtin_prefetch(x[c] + p + kPrefetchElems<T>, 0, 3);
    }
    V gv[R], xv[C];
    SCC_UNROLL
    for (int r = 0; r < R; ++r) gv[r] = load<V>(g[r] + p);
    SCC_UNROLL
    for (int c = 0; c < C; ++c) xv[c] = load<V>(x[c] + p);
    SCC_UNROLL
    for (int r = 0; r < R; ++r) {
      SCC_UNROLL
      for (int c = 0; c < C; ++c) acc[r * C + c] += gv[r] * xv[c];
    }
  }
  T sums[L];
  if constexpr (R * C == L && L > 1) {
    reduce_step<T, L>(acc, L);
    store(sums, acc[0]);
    constexpr int bits = __builtin_ctz(L);
    for (int l = 0; l < L; ++l) {
      const int t = bit_reverse(l, bits);
      a.out[(t / C) * a.ld + t % C] += sums[l];
    }
  } else {
    for (int t = 0; t < R * C; ++t) {
      store(sums, acc[t]);
      T s = 0;
      for (int l = 0; l < L; ++l) s += sums[l];
      a.out[(t / C) * a.ld + t % C] += s;
    }
  }
}

template <typename T, int R, int C = DotsTile<T>::cols>
void dots_cols(const DotsArgs<T>& a, int cols) {
  if (cols == C) return dots_fixed<T, R, C>(a);
  if constexpr (C > 1) dots_cols<T, R, C - 1>(a, cols);
}

template <typename T, int R = DotsTile<T>::rows>
void dots(const DotsArgs<T>& a, int rows, int cols) {
  if (rows == R) return dots_cols<T, R>(a, cols);
  if constexpr (R > 1) dots<T, R - 1>(a, rows, cols);
}

// -- epilogue ------------------------------------------------------------------------------

template <typename T>
struct Bits {  // the integer vector of a comparison's result (all ones where true)
  using lane = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef lane type __attribute__((vector_size(SCC_VECTOR_BYTES)));
};

// Lanes of a where mask is set, else of b.
template <typename V, typename M>
SCC_TARGET SCC_INLINE V where(M mask, V a, V b) {
  return (V)((mask & (M)a) | (~mask & (M)b));
}

// max(v, lo) and min(v, hi) that keep NaN, as torch's clamps do.
template <typename V>
SCC_TARGET SCC_INLINE V at_least(V v, V lo) {
  return where(v < lo, lo, v);
}
template <typename V>
SCC_TARGET SCC_INLINE V at_most(V v, V hi) {
  return where(v > hi, hi, v);
}

// e^v on float lanes: Cephes' expf (within 1 ulp where the result is a normal number);
// v is clamped to [-87.34, 88.38], the range of normal results; NaN stays NaN.
SCC_TARGET SCC_INLINE Vec<float>::type exp_lanes(Vec<float>::type x) {
  using V = Vec<float>::type;
  using M = Bits<float>::type;
  const V v = at_most(at_least(x, splat<V>(-87.3365447f)), splat<V>(88.3762626f));
  const V t = v * splat<V>(1.44269504088896341f) + splat<V>(0.5f);
  V n = __builtin_convertvector(__builtin_convertvector(t, M), V);
  n = where(n > t, n - splat<V>(1.0f), n);  // floor
  const V r = v - n * splat<V>(0.693359375f) - n * splat<V>(-2.12194440e-4f);
  V p = splat<V>(1.9875691500e-4f);
  p = p * r + splat<V>(1.3981999507e-3f);
  p = p * r + splat<V>(8.3334519073e-3f);
  p = p * r + splat<V>(4.1665795894e-2f);
  p = p * r + splat<V>(1.6666665459e-1f);
  p = p * r + splat<V>(5.0000001201e-1f);
  p = p * (r * r) + r + splat<V>(1.0f);
  const M scale = (__builtin_convertvector(n, M) + 127) << 23;  // 2^n
  return where(v != v, v, p * (V)scale);
}

// erf on float lanes, as ATen's vectorised erf computes it (Abramowitz & Stegun 7.1.26,
// |error| < 1.5e-7): what torch's own CPU GELU uses.
SCC_TARGET SCC_INLINE Vec<float>::type erf_lanes(Vec<float>::type x) {
  using V = Vec<float>::type;
  using M = Bits<float>::type;
  const M sign = (M)x & splat<M>(int32_t(0x80000000u));
  const V a = (V)((M)x & ~sign);
  const V t = splat<V>(1.0f) / (splat<V>(0.3275911f) * a + splat<V>(1.0f));
  V r = splat<V>(1.061405429f) * t + splat<V>(-1.453152027f);
  r = r * t + splat<V>(1.421413741f);
  r = r * t + splat<V>(-0.284496736f);
  r = r * t + splat<V>(0.254829592f);
  const V e = exp_lanes(-(x * x));
  return (V)((M)(splat<V>(1.0f) - e * t * r) | sign);
}

// act(v), lane by lane, as torch computes each activation.
template <typename T, Activation A>
SCC_TARGET SCC_INLINE typename Vec<T>::type activate(typename Vec<T>::type v) {
  using V = typename Vec<T>::type;
  if constexpr (A == kRelu) {
    return at_least(v, V{});
  } else if constexpr (A == kRelu6) {
    return at_most(at_least(v, V{}), splat<V>(T(6)));
  } else if constexpr (A == kHardswish) {
    return v * at_most(at_least(v + splat<V>(T(3)), V{}), splat<V>(T(6))) / splat<V>(T(6));
  } else if constexpr (A == kSilu || A == kGelu) {
    if constexpr (std::is_same_v<T, float>) {
      if constexpr (A == kSilu) return v / (splat<V>(1.0f) + exp_lanes(-v));
      return v * splat<V>(0.5f) * (splat<V>(1.0f) + erf_lanes(v * splat<V>(float(M_SQRT1_2))));
    } else {  // double (the tests' precision): the C library, lane by lane
      for (int l = 0; l < Vec<T>::lanes; ++l) {
        const T s = v[l];
        v[l] = A == kSilu ? s / (T(1) + std::exp(-s)) : s * T(0.5) * (T(1) + std::erf(s * T(M_SQRT1_2)));
      }
      return v;
    }
  } else {
    return v;
  }
}

// f(std::integral_constant<Activation, A>{}) for A = activation (kNone for unknown codes: the
// drivers check them).
template <typename F>
SCC_INLINE void by_activation(Activation activation, F&& f) {
  switch (activation) {
    case kRelu: return f(std::integral_constant<Activation, kRelu>{});
    case kRelu6: return f(std::integral_constant<Activation, kRelu6>{});
    case kHardswish: return f(std::integral_constant<Activation, kHardswish>{});
    case kSilu: return f(std::integral_constant<Activation, kSilu>{});
    case kGelu: return f(std::integral_constant<Activation, kGelu>{});
    default: return f(std::integral_constant<Activation, kNone>{});
  }
}

template <typename T, Activation A>
SCC_TARGET void epilogue_rows(const EpilogueArgs<T>& a, int rows) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  for (int r = 0; r < rows; ++r) {
    T* c = a.c + a.c_row[r];
    if (a.r) {
      const T* res = a.r + a.r_row[r];
      for (int64_t p = 0; p < a.pixels; p += L) store(c + p, activate<T, A>(load<V>(c + p) + load<V>(res + p)));
    } else {
      for (int64_t p = 0; p < a.pixels; p += L) store(c + p, activate<T, A>(load<V>(c + p)));
    }
  }
}

template <typename T>
void epilogue(const EpilogueArgs<T>& a, int rows) {
  by_activation(a.activation, [&](auto act) { epilogue_rows<T, decltype(act)::value>(a, rows); });
}

#include "kernels_last_impl.h"
#include "kernels_stacked_impl.h"

template <typename T>
Kernels<T> make_kernels(const char* isa) {
  Kernels<T> k{};
  k.isa = isa;
  k.lanes = Vec<T>::lanes;
  k.rows_max = SCC_ROWS_MAX;
  k.rows_vectors = SCC_ROWS_VECTORS;
  k.rows = &rows<T>;
  k.dots_rows = DotsTile<T>::rows;
  k.dots_cols = DotsTile<T>::cols;
  k.dots = &dots<T>;
  k.epilogue = &epilogue<T>;
#if defined(SCC_NARROW)
  if constexpr (std::is_same_v<T, float>) {
    k.narrow_cin = 32;
    k.narrow = &narrow;
    k.stack_permute_cin = 96;
    k.stack_permute = &stack_permute;
  }
#endif
  k.gemm_vectors = SCC_GEMM_VECTORS;
  k.interleave_max = std::min(16, Vec<T>::lanes);
  k.window_gemm = &window_gemm<T>;
  k.interleave = &interleave<T>;
  if constexpr (Vec<T>::lanes >= 4) k.quad_dots = &quad_dots<T>;
  k.deinterleave = &deinterleave<T>;
  k.stack_max = std::min(16, Vec<T>::lanes);
  k.stack = &stack<T>;
  k.stacked_gemm = &stacked_gemm<T>;
  k.to_tile = &to_tile<T>;
  k.from_tile = &from_tile<T>;
  return k;
}

}  // namespace

#define SCC_STR2(x) #x
#define SCC_STR(x) SCC_STR2(x)

const Kernels<float>& float_kernels() {
  static const Kernels<float> k = make_kernels<float>(SCC_STR(SCC_ISA));
  return k;
}

const Kernels<double>& double_kernels() {
  static const Kernels<double> k = make_kernels<double>(SCC_STR(SCC_ISA));
  return k;
}

}  // namespace SCC_ISA
}  // namespace scc_native

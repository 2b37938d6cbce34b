// The micro-kernels, written once on the compiler's portable vectors (GCC/Clang
// `vector_size`) and compiled once per instruction set by isa_*.cpp, which define:
//   SCC_ISA            namespace of this copy (avx512, avx2, portable)
//   SCC_TARGET         function attribute naming the instruction set (or nothing)
//   SCC_VECTOR_BYTES   bytes per vector register
//   SCC_ROWS_MAX       rows of the rows() register tile
//   SCC_ROWS_VECTORS   pixel vectors of the rows() register tile
// No include guard: included once per instruction set. Everything but the table accessors
// has internal linkage, so no code compiled for one instruction set is shared with another.
//
// rows(): a register tile of R rows x NV pixel vectors; per step m it loads NV vectors of
// B_m and broadcasts one A(r, m) per row: R * NV fused multiply-adds for NV + R loads.
// dots(): a tile of R x C dot products over pixels, each a vector accumulator; R * C equals
// the vector length, so one transposing reduction turns the tile into one vector of sums.

#include <cstdint>
#include <utility>

#include "kernels.h"

#if defined(__clang__)
#define SCC_UNROLL _Pragma("unroll")
#else
#define SCC_UNROLL _Pragma("GCC unroll 16")
#endif
#define SCC_INLINE inline __attribute__((always_inline))

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
    for (; p + NV * L <= a.pixels; p += NV * L)
      rows_block<T, R, NV>(ar, a.a_col + k0, a.b, a.b_row + k0, kn, cr, init, acc, p);
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

// The channels_last stacked micro-kernels (stack, stacked_gemm), part of kernels_impl.h:
// included there, inside its per-instruction-set namespace, after kernels_last_impl.h (whose
// put_output, StreamFence, by_windows, zip_rounds and gemm_pixels they use). No include
// guard: included once per instruction set.

// -- channels_last: stacked rows and their GEMM ----------------------------------------------

template <typename T, int CD>
SCC_TARGET void stack_cd(const StackArgs<T>& a) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  const int64_t depth = (a.depth + L - 1) / L * L;
  int64_t first[CD], need = 0;
  SCC_UNROLL
  for (int w = 0; w < CD; ++w) first[w] = a.first[w], need = std::max(need, first[w] + depth);
  for (int64_t p = 0; p < a.pixels; ++p) {
    const T* x = a.x + p * a.x_step;
    if (a.row && a.cin % L == 0) {  // the row, then its first channels again until every window's reads fit
      for (int64_t c = 0; c < a.cin; c += L) store(a.row + c, load<V>(x + c));
      for (int64_t c = a.cin; c < need; c += L) store(a.row + c, load<V>(a.row + c - a.cin));
      x = a.row;
    } else if (a.row) {  // the same in element runs (library calls)
      __builtin_memcpy(a.row, x, size_t(a.cin) * sizeof(T));
      for (int64_t c = a.cin; c < need; c += a.cin)
        __builtin_memcpy(a.row + c, a.row, size_t(std::min(a.cin, need - c)) * sizeof(T));
      x = a.row;
    }
    T* z = a.z + p * a.z_step;
    for (int64_t j = 0; j < depth; j += L) {  // weight columns [j, j + L) of every window
      V v[CD];
      SCC_UNROLL
      for (int w = 0; w < CD; ++w) v[w] = load<V>(x + first[w] + j);
      zip_rounds<T, CD>(v);
      SCC_UNROLL
      for (int q = 0; q < CD; ++q) store(z + j * CD + q * L, v[q]);
    }
  }
}

template <typename T>
SCC_TARGET void stack(const StackArgs<T>& a) {
  by_windows<T>(a.windows, [&](auto cd) { stack_cd<T, decltype(cd)::value>(a); });
}

#if defined(SCC_NARROW)
// stack() for rows of at most 32 * P channels, the row in 2 * P registers: each vector of z is a
// two-register permute of each 32-channel part of the row, blended by the index (32->192: 4
// permutes a pixel instead of a row copy, 8 loads and 24 zips; 64->256: 16 permutes and 8 blends
// instead of 5 loads and stores of the extended row, 8 loads and 24 zips).
template <int P>
SCC_TARGET void stack_permute_parts(const StackArgs<float>& a) {
  __mmask16 lanes[2 * P];
  SCC_UNROLL
  for (int i = 0; i < 2 * P; ++i) lanes[i] = first_lanes(a.cin - 16 * i);
  for (int64_t p = 0; p < a.pixels; ++p) {
    const float* x = a.x + p * a.x_step;
    __m512 r[2 * P];
    SCC_UNROLL
    for (int i = 0; i < 2 * P; ++i) r[i] = _mm512_maskz_loadu_ps(lanes[i], x + 16 * i);
    float* z = a.z + p * a.z_step;
    for (int64_t q = 0; q < a.index_vectors; ++q) {
      const __m512i index = _mm512_loadu_si512(a.index + q * 16);
      __m512 v = _mm512_permutex2var_ps(r[0], index, r[1]);
      SCC_UNROLL
      for (int i = 1; i < P; ++i)
        v = _mm512_mask_blend_ps(_mm512_cmpge_epi32_mask(index, _mm512_set1_epi32(32 * i)), v,
                                 _mm512_permutex2var_ps(r[2 * i], index, r[2 * i + 1]));
      _mm512_storeu_ps(z + q * 16, v);
    }
  }
}

SCC_TARGET void stack_permute(const StackArgs<float>& a) {
  if (a.cin <= 32) return stack_permute_parts<1>(a);
  if (a.cin <= 64) return stack_permute_parts<2>(a);
  return stack_permute_parts<3>(a);
}
#endif

template <typename V, typename S, int... I>
SCC_TARGET SCC_INLINE V repeat(S s, std::integer_sequence<int, I...>) {
  return __builtin_shufflevector(s, s, (I % (sizeof(S) / sizeof(s[0])))...);
}

// The CD values at p repeated across a vector (one broadcasting load).
template <typename T, int CD>
SCC_TARGET SCC_INLINE typename Vec<T>::type load_repeated(const T* p) {
  using V = typename Vec<T>::type;
  if constexpr (CD == 1) {
    return splat<V>(*p);
  } else if constexpr (CD == Vec<T>::lanes) {
    return load<V>(p);
  } else {
#if defined(__x86_64__)  // one broadcasting load (the portable form compiles to a load and a shuffle)
    if constexpr (SCC_VECTOR_BYTES == 64 && std::is_same_v<T, float> && CD == 8)
      return (V)_mm512_broadcast_f32x8(_mm256_loadu_ps(p));
    if constexpr (SCC_VECTOR_BYTES == 64 && std::is_same_v<T, float> && CD == 4)
      return (V)_mm512_broadcast_f32x4(_mm_loadu_ps(p));
    if constexpr (SCC_VECTOR_BYTES == 64 && std::is_same_v<T, double> && CD == 4)
      return (V)_mm512_broadcast_f64x4(_mm256_loadu_pd(p));
    if constexpr (SCC_VECTOR_BYTES == 64 && std::is_same_v<T, float> && CD == 2)
      return (V)_mm512_castpd_ps(_mm512_set1_pd(*reinterpret_cast<const double*>(p)));
    if constexpr (SCC_VECTOR_BYTES == 32 && std::is_same_v<T, float> && CD == 4)
      return (V)_mm256_broadcast_ps(reinterpret_cast<const __m128*>(p));
    if constexpr (SCC_VECTOR_BYTES == 32 && std::is_same_v<T, float> && CD == 2)
      return (V)_mm256_castpd_ps(_mm256_broadcast_sd(reinterpret_cast<const double*>(p)));
#endif
    typedef T S __attribute__((vector_size(CD * sizeof(T))));
    return repeat<V>(load<S>(p), std::make_integer_sequence<int, Vec<T>::lanes>{});
  }
}

// Whole output vectors with a cheap activation, from registers.
template <typename T, Activation A, int R, int J>
SCC_TARGET SCC_INLINE void stacked_store_act(const StackedGemmArgs<T>& a, int64_t p, int64_t v0,
                                             typename Vec<T>::type (&acc)[R][J]) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  SCC_UNROLL
  for (int r = 0; r < R; ++r) {
    T* y = a.y + (p + r) * a.y_step + v0 * L;
    const T* res = a.r ? a.r + (p + r) * a.r_step + v0 * L : nullptr;
    SCC_UNROLL
    for (int j = 0; j < J; ++j) {
      V o = acc[r][j];
      if (res) o += load<V>(res + j * L);
      o = activate<T, A>(o);
      if (a.stream) {
        stream_store(y + j * L, o);
      } else {
        store(y + j * L, o);
      }
    }
  }
}

// The rest out of line (a partial last vector, the costly activations: inlined into every tile
// they took minutes to compile): acc[r * cols + j] for r < rows, j < cols.
template <typename T, Activation A>
SCC_TARGET SCC_NOINLINE void stacked_store_rows(const StackedGemmArgs<T>& a, int64_t p, int64_t v0,
                                                const typename Vec<T>::type* acc, int rows, int cols) {
  constexpr int L = Vec<T>::lanes;
  for (int r = 0; r < rows; ++r) {
    T* y = a.y + (p + r) * a.y_step;
    const T* res = a.r ? a.r + (p + r) * a.r_step : nullptr;
    for (int j = 0; j < cols; ++j) {
      const int64_t at = (v0 + j) * L;
      put_output<T, A>(y + at, res ? res + at : nullptr, acc[r * cols + j], a.cout - at, a.stream);
    }
  }
}

template <typename T>
SCC_TARGET SCC_NOINLINE void stacked_store_slow(const StackedGemmArgs<T>& a, int64_t p, int64_t v0,
                                                const typename Vec<T>::type* acc, int rows, int cols) {
  by_activation(a.activation,
                [&](auto act) { stacked_store_rows<T, decltype(act)::value>(a, p, v0, acc, rows, cols); });
}

// R pixels from p x J output vectors from v0.
template <typename T, int CD, int R, int J>
SCC_TARGET SCC_INLINE void stacked_tile(const StackedGemmArgs<T>& a, int64_t p, int64_t v0) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  V acc[R][J];
  SCC_UNROLL
  for (int j = 0; j < J; ++j) {
    const V b = load<V>(a.bias + (v0 + j) * L);
    SCC_UNROLL
    for (int r = 0; r < R; ++r) acc[r][j] = a.first ? b : load<V>(a.t + (p + r) * a.t_step + (v0 + j) * L);
  }
  const T* z[R];
  SCC_UNROLL
  for (int r = 0; r < R; ++r) z[r] = a.z + (p + r) * a.z_step;
  const T* w = a.w + v0 * a.w_step;
  for (int64_t k = 0; k < a.depth; ++k) {
    V b[J];
    SCC_UNROLL
    for (int j = 0; j < J; ++j) b[j] = load<V>(w + j * a.w_step + k * L);
    SCC_UNROLL
    for (int r = 0; r < R; ++r) {
      const V s = load_repeated<T, CD>(z[r] + k * CD);
      SCC_UNROLL
      for (int j = 0; j < J; ++j) acc[r][j] += s * b[j];
    }
  }
  if (!a.last) {  // partial sums, for the next depth block
    SCC_UNROLL
    for (int r = 0; r < R; ++r) {
      SCC_UNROLL
      for (int j = 0; j < J; ++j) store(a.t + (p + r) * a.t_step + (v0 + j) * L, acc[r][j]);
    }
    return;
  }
  const bool cheap = a.activation == kNone || a.activation == kRelu || a.activation == kRelu6;
  if ((v0 + J) * L > a.cout || !cheap) {
    V out[R * J];  // a copy: handing out acc's own address kept it in memory on every path
    SCC_UNROLL
    for (int r = 0; r < R; ++r) {
      SCC_UNROLL
      for (int j = 0; j < J; ++j) out[r * J + j] = acc[r][j];
    }
    return stacked_store_slow<T>(a, p, v0, out, R, J);
  }
  switch (a.activation) {
    case kRelu: return stacked_store_act<T, kRelu>(a, p, v0, acc);
    case kRelu6: return stacked_store_act<T, kRelu6>(a, p, v0, acc);
    default: return stacked_store_act<T, kNone>(a, p, v0, acc);
  }
}

template <typename T, int CD, int J>
SCC_TARGET SCC_NOINLINE void stacked_vectors(const StackedGemmArgs<T>& a, int64_t v0) {
  constexpr int R = gemm_pixels(J);
  int64_t p = 0;
  for (; p + R <= a.pixels; p += R) {
    stacked_tile<T, CD, R, J>(a, p, v0);
    if (a.ahead) a.ahead->step();
  }
  if constexpr (R > 4) {
    if (p + 4 <= a.pixels) stacked_tile<T, CD, 4, J>(a, p, v0), p += 4;
  }
  if constexpr (R > 2) {
    if (p + 2 <= a.pixels) stacked_tile<T, CD, 2, J>(a, p, v0), p += 2;
  }
  if constexpr (R > 1) {
    if (p < a.pixels) stacked_tile<T, CD, 1, J>(a, p, v0);
  }
}

template <typename T, int CD, int... J>
SCC_TARGET SCC_INLINE void stacked_pick(const StackedGemmArgs<T>& a, int64_t v0, int64_t n,
                                        std::integer_sequence<int, J...>) {
  ((n == J + 1 ? stacked_vectors<T, CD, J + 1>(a, v0) : void()), ...);
}

// Vector block by vector block (balanced, at most SCC_GEMM_VECTORS each), every register tile of
// pixels per block, so the block's weights stay in cache while the pixels' stacked rows pass.
template <typename T, int CD>
SCC_TARGET void stacked_gemm_cd(const StackedGemmArgs<T>& a) {
  constexpr int J = SCC_GEMM_VECTORS;
  const int64_t tiles = (a.vectors + J - 1) / J, per = (a.vectors + tiles - 1) / tiles;
  for (int64_t v0 = 0; v0 < a.vectors; v0 += per)
    stacked_pick<T, CD>(a, v0, std::min(per, a.vectors - v0), std::make_integer_sequence<int, J>{});
}

template <typename T>
void stacked_gemm(const StackedGemmArgs<T>& a) {
  const StreamFence fence{a.stream};
  by_windows<T>(a.windows, [&](auto cd) { stacked_gemm_cd<T, decltype(cd)::value>(a); });
}

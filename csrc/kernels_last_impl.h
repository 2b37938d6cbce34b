// The channels_last micro-kernels (window_gemm, interleave, narrow), part of kernels_impl.h:
// included there, inside its per-instruction-set namespace, after the helpers they use (Vec,
// load, store, splat, activate). No include guard: included once per instruction set.

// -- channels_last: window GEMM and interleave -------------------------------------------------

// The first n lanes at p (the rest zero), and their store: an output vector's real lanes.
template <typename T>
SCC_TARGET SCC_INLINE typename Vec<T>::type load_first(const T* p, int64_t n) {
  using V = typename Vec<T>::type;
  if (n >= Vec<T>::lanes) return load<V>(p);
  V v{};
  if (n > 0) __builtin_memcpy(&v, p, size_t(n) * sizeof(T));
  return v;
}

template <typename T>
SCC_TARGET SCC_INLINE void store_first(T* p, typename Vec<T>::type v, int64_t n) {
  if (n >= Vec<T>::lanes) return store(p, v);
  if (n > 0) __builtin_memcpy(p, &v, size_t(n) * sizeof(T));
}

// A store that bypasses the caches (x86: MOVNTPS/PD; p aligned to the vector), for outputs
// too large to stay in cache; stream_fence() orders them.
template <typename T>
SCC_TARGET SCC_INLINE void stream_store(T* p, typename Vec<T>::type v) {
#if defined(__x86_64__)
  if constexpr (SCC_VECTOR_BYTES == 64 && std::is_same_v<T, float>) return _mm512_stream_ps(p, (__m512)v);
  if constexpr (SCC_VECTOR_BYTES == 64 && std::is_same_v<T, double>) return _mm512_stream_pd(p, (__m512d)v);
  if constexpr (SCC_VECTOR_BYTES == 32 && std::is_same_v<T, float>) return _mm256_stream_ps(p, (__m256)v);
  if constexpr (SCC_VECTOR_BYTES == 32 && std::is_same_v<T, double>) return _mm256_stream_pd(p, (__m256d)v);
  if constexpr (SCC_VECTOR_BYTES == 16 && std::is_same_v<T, float>) return _mm_stream_ps(p, (__m128)v);
  if constexpr (SCC_VECTOR_BYTES == 16 && std::is_same_v<T, double>) return _mm_stream_pd(p, (__m128d)v);
#endif
  store(p, v);
}

SCC_TARGET void stream_fence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

// One output vector of which the first n lanes are real: the residual at r (nullptr: none) added,
// the activation applied, stored at y (past the caches if `stream` and the vector is whole).
template <typename T, Activation A>
SCC_TARGET SCC_INLINE void put_output(T* y, const T* r, typename Vec<T>::type o, int64_t n, bool stream) {
  if (r) o += load_first(r, n);
  o = activate<T, A>(o);
  if (stream && n >= Vec<T>::lanes) {
    stream_store(y, o);
  } else {
    store_first(y, o, n);
  }
}

// Streamed stores are weakly ordered: a kernel that streams orders them before it returns.
struct StreamFence {
  bool on;
  ~StreamFence() {
    if (on) stream_fence();
  }
};

// f(std::integral_constant<int, CD>{}) for CD = windows: 1, 2, 4, 8, or 16 (16 lanes or more).
template <typename T, typename F>
SCC_INLINE void by_windows(int64_t windows, F&& f) {
  switch (windows) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 8: return f(std::integral_constant<int, 8>{});
    default:
      if constexpr (Vec<T>::lanes >= 16) return f(std::integral_constant<int, 16>{});
  }
}

// R pixels from p x J vectors from v0.
template <typename T, int R, int J>
SCC_TARGET SCC_INLINE void window_gemm_tile(const WindowGemmArgs<T>& a, int64_t p, int64_t v0) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  V acc[R][J];
  SCC_UNROLL
  for (int r = 0; r < R; ++r) {
    SCC_UNROLL
    for (int j = 0; j < J; ++j)
      acc[r][j] = a.first ? load<V>(a.bias + (v0 + j) * L) : load<V>(a.t + (p + r) * a.t_step + (v0 + j) * L);
  }
  const T* x[R];
  SCC_UNROLL
  for (int r = 0; r < R; ++r) x[r] = a.x + (p + r) * a.x_step;
  const T* w = a.w + v0 * L;
  int64_t k = 0;
  do {  // depth >= 1: a loop that may not run made the compiler keep the accumulators on the stack
    const int64_t c = a.col[k];
    V b[J];
    SCC_UNROLL
    for (int j = 0; j < J; ++j) b[j] = load<V>(w + k * a.w_step + j * L);
    SCC_UNROLL
    for (int r = 0; r < R; ++r) {
      const V s = splat<V>(x[r][c]);
      SCC_UNROLL
      for (int j = 0; j < J; ++j) acc[r][j] += s * b[j];
    }
  } while (++k < a.depth);
  SCC_UNROLL
  for (int r = 0; r < R; ++r) {
    SCC_UNROLL
    for (int j = 0; j < J; ++j) store(a.t + (p + r) * a.t_step + (v0 + j) * L, acc[r][j]);
  }
}

// The register tile for J vectors: as many pixels as the accumulators allow (at most 8).
constexpr int gemm_pixels(int vectors) { return std::max(1, std::min(8, SCC_GEMM_ACCUMULATORS / vectors)); }

template <typename T, int J>
SCC_TARGET SCC_NOINLINE void window_gemm_vectors(const WindowGemmArgs<T>& a, int64_t v0) {
  constexpr int R = gemm_pixels(J);
  int64_t p = 0;
  for (; p + R <= a.pixels; p += R) {
    window_gemm_tile<T, R, J>(a, p, v0);
    if (a.ahead) a.ahead->step();
  }
  // The rest (< R <= 8 pixels) in tiles of 4, 2 and 1.
  if constexpr (R > 4) {
    if (p + 4 <= a.pixels) window_gemm_tile<T, 4, J>(a, p, v0), p += 4;
  }
  if constexpr (R > 2) {
    if (p + 2 <= a.pixels) window_gemm_tile<T, 2, J>(a, p, v0), p += 2;
  }
  if constexpr (R > 1) {
    if (p < a.pixels) window_gemm_tile<T, 1, J>(a, p, v0);
  }
}

template <typename T, int... J>
SCC_TARGET SCC_INLINE void window_gemm_pick(const WindowGemmArgs<T>& a, int64_t v0, int64_t n,
                                            std::integer_sequence<int, J...>) {
  ((n == J + 1 ? window_gemm_vectors<T, J + 1>(a, v0) : void()), ...);
}

// Vector block by vector block (the blocks balanced, at most SCC_GEMM_VECTORS each); per block
// every register tile of pixels, so the block's weights stay in L1 while the pixels stream past.
template <typename T>
SCC_TARGET void window_gemm(const WindowGemmArgs<T>& a) {
  constexpr int J = SCC_GEMM_VECTORS;
  const int64_t tiles = (a.count + J - 1) / J, per = (a.count + tiles - 1) / tiles;
  for (int64_t v0 = 0; v0 < a.count; v0 += per)
    window_gemm_pick<T>(a, v0, std::min(per, a.count - v0), std::make_integer_sequence<int, J>{});
}

// -- channels_last: 4-channel dot products (QuadDotsArgs) ---------------------------------------

// Lanes 4c + m of quad_sum(a) hold the sum of group c's 4 lanes of a[m'] (m' = 0, 2, 1, 3 for m =
// 0, 1, 2, 3): two rounds of half shuffles, as reduce_step() does for whole vectors.
template <typename T>
SCC_TARGET SCC_INLINE typename Vec<T>::type quad_sum(const typename Vec<T>::type* a) {
  using Seq = std::make_integer_sequence<int, Vec<T>::lanes>;
  const auto u = half_shuffle<4, false>(a[0], a[1], Seq{}) + half_shuffle<4, true>(a[0], a[1], Seq{});
  const auto v = half_shuffle<4, false>(a[2], a[3], Seq{}) + half_shuffle<4, true>(a[2], a[3], Seq{});
  return half_shuffle<2, false>(u, v, Seq{}) + half_shuffle<2, true>(u, v, Seq{});
}

// Lane G * m + c of the result is lane 4c + m' of quad_sum's (the m-th accumulator's group c).
constexpr int quad_order(int lanes, int l) {
  const int g = lanes / 4, m = l / g, c = l % g;
  return 4 * c + (m == 1 ? 2 : m == 2 ? 1 : m);
}

template <typename V, int... I>
SCC_TARGET SCC_INLINE V quad_ordered(V s, std::integer_sequence<int, I...>) {
  return __builtin_shufflevector(s, s, quad_order(sizeof...(I), I)...);
}

// p[0..4) in every group of 4 lanes: one broadcasting load on x86 (GCC's generic shuffle
// went through the stack).
template <typename T>
SCC_TARGET SCC_INLINE typename Vec<T>::type broadcast4(const T* p) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
#if defined(__x86_64__)
  if constexpr (SCC_VECTOR_BYTES == 64 && std::is_same_v<T, float>) return (V)_mm512_broadcast_f32x4(_mm_loadu_ps(p));
  if constexpr (SCC_VECTOR_BYTES == 64 && std::is_same_v<T, double>) return (V)_mm512_broadcast_f64x4(_mm256_loadu_pd(p));
  if constexpr (SCC_VECTOR_BYTES == 32 && std::is_same_v<T, float>) return (V)_mm256_broadcast_ps(reinterpret_cast<const __m128*>(p));
#endif
  V v;
  for (int l = 0; l < L; ++l) v[l] = p[l % 4];
  return v;
}

// Lanes [m G, (m + 1) G) of v stored at p.
template <typename T, int M>
SCC_TARGET SCC_INLINE void store_piece(T* p, typename Vec<T>::type v) {
  constexpr int G = Vec<T>::lanes / 4;
#if defined(__x86_64__)
  if constexpr (SCC_VECTOR_BYTES == 64 && std::is_same_v<T, float>) {
    return _mm_storeu_ps(p, _mm512_extractf32x4_ps((__m512)v, M));
  }
#endif
  T lanes[Vec<T>::lanes];
  store(lanes, v);
  for (int g = 0; g < G; ++g) p[g] = lanes[M * G + g];
}

// R pixels from p (clamped to the last; only real ones stored) x J vectors from v0; bias[f / 4]:
// the bias of accumulators f..f + 3 in quad_ordered()'s order.
template <typename T, int R, int J>
SCC_TARGET SCC_INLINE void quad_tile(const QuadDotsArgs<T>& a, int64_t p, int64_t v0,
                                     const typename Vec<T>::type* bias) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes, G = L / 4;
  static_assert(R * J % 4 == 0, "accumulators are summed four at a time");
  V acc[R][J];
  SCC_UNROLL
  for (int r = 0; r < R; ++r) {
    SCC_UNROLL
    for (int j = 0; j < J; ++j) acc[r][j] = V{};
  }
  const T* x[R];
  SCC_UNROLL
  for (int r = 0; r < R; ++r) x[r] = a.x + std::min<int64_t>(p + r, a.pixels - 1) * a.x_step;
  const T* w = a.w + v0 * L;
  const int64_t w_step = a.count * L;
  for (int64_t q = 0; q < a.quads; ++q) {
    const int64_t c = a.col[q];
    V b[J];
    SCC_UNROLL
    for (int j = 0; j < J; ++j) b[j] = load<V>(w + q * w_step + j * L);
    SCC_UNROLL
    for (int r = 0; r < R; ++r) {
      const V s = broadcast4<T>(x[r] + c);
      SCC_UNROLL
      for (int j = 0; j < J; ++j) acc[r][j] += s * b[j];
    }
    if ((q & 3) == 3 && a.ahead) a.ahead->step();  // a line of each row read
  }
  // Four accumulators (pixel, vector) at a time, in pixel-major order, to G sums each.
  using Seq = std::make_integer_sequence<int, L>;
  SCC_UNROLL
  for (int f = 0; f < R * J; f += 4) {
    V four[4];
    SCC_UNROLL
    for (int m = 0; m < 4; ++m) four[m] = acc[(f + m) / J][(f + m) % J];
    const V sums = quad_ordered(quad_sum<T>(four), Seq{}) + bias[f / 4];
    T* out[4];
    SCC_UNROLL
    for (int m = 0; m < 4; ++m) out[m] = a.t + (p + (f + m) / J) * a.t_step + (v0 + (f + m) % J) * G;
    if (p + f / J < a.pixels) store_piece<T, 0>(out[0], sums);
    if (p + (f + 1) / J < a.pixels) store_piece<T, 1>(out[1], sums);
    if (p + (f + 2) / J < a.pixels) store_piece<T, 2>(out[2], sums);
    if (p + (f + 3) / J < a.pixels) store_piece<T, 3>(out[3], sums);
  }
}

// The register tile for J vectors: R * J accumulators, a multiple of 4, at most the budget.
constexpr int quad_pixels(int vectors) {
  int r = std::max(1, std::min(8, SCC_GEMM_ACCUMULATORS / vectors));
  while (r > 1 && (r * vectors) % 4 != 0) --r;
  return (r * vectors) % 4 == 0 ? r : 4;
}

template <typename T, int J>
SCC_TARGET SCC_NOINLINE void quad_vectors(const QuadDotsArgs<T>& a, int64_t v0) {
  using V = typename Vec<T>::type;
  constexpr int R = quad_pixels(J), L = Vec<T>::lanes, G = L / 4;
  V bias[R * J / 4];
  for (int f = 0; f < R * J; f += 4) {
    T lanes[L];
    for (int m = 0; m < 4; ++m)
      for (int g = 0; g < G; ++g) lanes[m * G + g] = a.bias ? a.bias[(v0 + (f + m) % J) * G + g] : T(0);
    bias[f / 4] = load<V>(lanes);
  }
  for (int64_t p = 0; p < a.pixels; p += R) {
    quad_tile<T, R, J>(a, p, v0, bias);
  }
}

template <typename T>
SCC_TARGET void quad_dots(const QuadDotsArgs<T>& a) {
  // Vector blocks of at most 4 (3 where 4 would leave one or two over).
  for (int64_t v0 = 0; v0 < a.count;) {
    const int64_t left = a.count - v0;
    const int64_t n = left >= 4 && left != 5 && left != 6 ? 4 : left >= 3 ? 3 : left;
    if (n == 4) quad_vectors<T, 4>(a, v0);
    if (n == 3) quad_vectors<T, 3>(a, v0);
    if (n == 2) quad_vectors<T, 2>(a, v0);
    if (n == 1) quad_vectors<T, 1>(a, v0);
    v0 += n;
  }
}

// Lane 2i of zip<Hi>(a, b) is lane i (Hi: L/2 + i) of a, lane 2i + 1 that of b.
constexpr int zip_index(int lanes, bool hi, int l) { return (l % 2 ? lanes : 0) + l / 2 + (hi ? lanes / 2 : 0); }

template <bool Hi, typename V, int... I>
SCC_TARGET SCC_INLINE V zip(V a, V b, std::integer_sequence<int, I...>) {
  return __builtin_shufflevector(a, b, zip_index(sizeof...(I), Hi, I)...);
}

// Even (Odd: odd) lanes of the concatenation a, b: the inverse of the zips.
template <bool Odd, typename V, int... I>
SCC_TARGET SCC_INLINE V unzip(V a, V b, std::integer_sequence<int, I...>) {
  return __builtin_shufflevector(a, b, (2 * I + (Odd ? 1 : 0))...);
}

// v[w] lane l (w < CD) moves to lane (l * CD + w) % L of v[(l * CD + w) / L]: log2(CD)
// rounds of zipping v[i] with v[i + CD / 2]. Inverse: the other way (the backward's gy into
// window order), each round unzipping v[2i], v[2i + 1] back into v[i], v[i + CD / 2].
template <typename T, int CD, bool Inverse = false>
SCC_TARGET SCC_INLINE void zip_rounds(typename Vec<T>::type* v) {
  using V = typename Vec<T>::type;
  using Seq = std::make_integer_sequence<int, Vec<T>::lanes>;
  SCC_UNROLL
  for (int round = 1; round < CD; round *= 2) {
    V u[CD];
    SCC_UNROLL
    for (int i = 0; i < CD / 2; ++i) {
      if constexpr (Inverse) {
        u[i] = unzip<false>(v[2 * i], v[2 * i + 1], Seq{});
        u[i + CD / 2] = unzip<true>(v[2 * i], v[2 * i + 1], Seq{});
      } else {
        u[2 * i] = zip<false>(v[i], v[i + CD / 2], Seq{});
        u[2 * i + 1] = zip<true>(v[i], v[i + CD / 2], Seq{});
      }
    }
    SCC_UNROLL
    for (int i = 0; i < CD; ++i) v[i] = u[i];
  }
}

template <typename T, int CD, Activation A>
SCC_TARGET void interleave_cd(const InterleaveArgs<T>& a) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  for (int64_t p = 0; p < a.pixels; ++p) {
    const T* t = a.t + p * a.t_step;
    T* y = a.y + p * a.y_step;
    const T* r = a.r ? a.r + p * a.r_step : nullptr;
    for (int64_t j = 0; j * CD < a.cout; j += L) {  // outputs [j * CD, (j + L) * CD)
      V v[CD];
      SCC_UNROLL
      for (int w = 0; w < CD; ++w) v[w] = load<V>(t + w * a.ldt + j);
      zip_rounds<T, CD>(v);
      SCC_UNROLL
      for (int q = 0; q < CD; ++q) {
        const int64_t at = j * CD + q * L;
        put_output<T, A>(y + at, r ? r + at : nullptr, v[q], a.cout - at, a.stream);
      }
    }
  }
}

template <typename T, Activation A>
SCC_TARGET void interleave_act(const InterleaveArgs<T>& a) {
  by_windows<T>(a.windows, [&](auto cd) { interleave_cd<T, decltype(cd)::value, A>(a); });
}

template <typename T>
void interleave(const InterleaveArgs<T>& a) {
  const StreamFence fence{a.stream};
  by_activation(a.activation, [&](auto act) { interleave_act<T, decltype(act)::value>(a); });
}

template <typename T, int CD>
SCC_TARGET void deinterleave_cd(const DeinterleaveArgs<T>& a) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  for (int64_t p = 0; p < a.pixels; ++p) {
    const T* y = a.y + p * a.y_step;
    T* t = a.t + p * a.t_step;
    for (int64_t j = 0; j < a.ldt; j += L) {  // outputs [j * CD, (j + L) * CD)
      V v[CD];
      SCC_UNROLL
      for (int q = 0; q < CD; ++q) v[q] = load_first(y + j * CD + q * L, a.cout - j * CD - q * L);
      zip_rounds<T, CD, true>(v);
      SCC_UNROLL
      for (int w = 0; w < CD; ++w) store(t + w * a.ldt + j, v[w]);
    }
  }
}

template <typename T>
SCC_TARGET void deinterleave(const DeinterleaveArgs<T>& a) {
  by_windows<T>(a.windows, [&](auto cd) { deinterleave_cd<T, decltype(cd)::value>(a); });
}

// -- narrow (AVX-512) ----------------------------------------------------------------------

#if defined(SCC_NARROW)
static_assert(SCC_VECTOR_BYTES == 64, "narrow() is written for 16 float lanes");

SCC_TARGET SCC_INLINE __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// R pixels: their input rows in registers, then every output vector of each.
template <Activation A, int R>
SCC_TARGET SCC_INLINE void narrow_pixels(const NarrowArgs<float>& a, int64_t p) {
  using V = Vec<float>::type;
  const __mmask16 lo_lanes = first_lanes(a.cin), hi_lanes = first_lanes(a.cin - 16);
  __m512 lo[R], hi[R];
  SCC_UNROLL
  for (int r = 0; r < R; ++r) {  // the rows `ahead` pixels on, a line or two each
    if (p + r + a.ahead >= a.pixels) break;
    const char* far = reinterpret_cast<const char*>(a.x + (p + r + a.ahead) * a.x_step);
    __builtin_prefetch(far, 0, 3);
    if (a.cin > 16) __builtin_prefetch(far + 64, 0, 3);
  }
  SCC_UNROLL
  for (int r = 0; r < R; ++r) {
    const float* x = a.x + (p + r) * a.x_step;
    lo[r] = _mm512_maskz_loadu_ps(lo_lanes, x);
    hi[r] = _mm512_maskz_loadu_ps(hi_lanes, x + 16);
  }
  for (int64_t j = 0; j < a.ldo; j += 16) {
    const __m512 b = _mm512_loadu_ps(a.bias + j);
    __m512 acc[R];
    SCC_UNROLL
    for (int r = 0; r < R; ++r) acc[r] = b;
    for (int64_t k = 0; k < a.gw; ++k) {
      const __m512i idx = _mm512_loadu_si512(a.index + k * a.ldo + j);
      const __m512 w = _mm512_loadu_ps(a.weight + k * a.ldo + j);
      SCC_UNROLL
      for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_permutex2var_ps(lo[r], idx, hi[r]), w, acc[r]);
    }
    const __mmask16 out = first_lanes(a.cout - j);
    const bool stream = a.stream && a.cout - j >= 16;
    SCC_UNROLL
    for (int r = 0; r < R; ++r) {
      V v = (V)acc[r];
      if (a.r) v += (V)_mm512_maskz_loadu_ps(out, a.r + (p + r) * a.r_step + j);
      float* y = a.y + (p + r) * a.y_step + j;
      if (stream) {
        _mm512_stream_ps(y, (__m512)activate<float, A>(v));
      } else {
        _mm512_mask_storeu_ps(y, out, (__m512)activate<float, A>(v));
      }
    }
  }
}

template <Activation A>
SCC_TARGET void narrow_act(const NarrowArgs<float>& a) {
  constexpr int R = 8;
  int64_t p = 0;
  for (; p + R <= a.pixels; p += R) narrow_pixels<A, R>(a, p);
  for (; p < a.pixels; ++p) narrow_pixels<A, 1>(a, p);
}

void narrow(const NarrowArgs<float>& a) {
  const StreamFence fence{a.stream};
  by_activation(a.activation, [&](auto act) { narrow_act<decltype(act)::value>(a); });
}
#endif


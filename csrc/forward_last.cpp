// The channels_last SCC forward of a layer whose cd windows interleave their outputs (output
// o = j * cd + w is window w's j-th, as the paper assigns them; cd a power of two dividing the
// vector length), window by window; also NCHW layers with deep windows (gw >= 128) on small
// images (128-256 pixels) and no epilogue, through pixel-major copies of each block's inputs
// and outputs.
//
// One window's products are a GEMM read straight from the channels_last input: broadcasts of
// its input channels times its packed weights (window_gemm, kernels.h), for a block of pixels,
// into a per-thread buffer in window order. interleave() then writes every pixel's outputs in
// output order, with the bias already in and the epilogue applied, cd vectors at a time. No copy
// of the input, no transpose of the output; the buffer stays in L2.
//
// Blocking: per pixel block (its input rows in L2) and output group (a few vectors of every
// window: cd * group * L consecutive channels, their buffer in L2), per window and depth block,
// the group's weights (depth x group vectors) stay in L1 while the block's pixels stream past;
// earlier depth blocks' partial sums wait in the buffer.
//
// Also here: the stacked kernel for channels_last expansions, layers of more than 32 channels
// with cout >= cin and rows of 33-64 channels (run_stacked_gemm below), which computes vectors
// of consecutive outputs of several windows at once from a per-pixel copy of the window
// channels, and so writes output order straight from registers.
#include "drivers.h"

#include <ATen/Parallel.h>

#include <cstring>
#include <vector>

namespace scc_native {
namespace {

constexpr int64_t kWeightBytes = 24 * 1024;   // one depth block of a group's vectors (L1)
constexpr int64_t kBlockBytes = 192 * 1024;   // a pixel block's input rows, and its buffer (L2)
constexpr int64_t kMaxBlock = 512;
// NCHW layers with windows this wide run here too, if their images have this many pixels
// (paired runs against the tiles' kernel, one thread, batch 16: 1024->256 and 1024->512 at
// 14x14 1.26x and 1.28x; 256->1024 and 256->256 at 14x14 (gw = 64) 0.81x; at 7x7 2048->512
// 1.04x, 512->2048, 960->320, 160->960, 320->1280 0.81-0.92x; 512->256 at 28x28 0.73x)
constexpr int64_t kNchwDepth = 128;
constexpr int64_t kNchwPixels[2] = {128, 256};
// Subsampled channels_last views (stride-2 layers) run here, their rows gathered, if their
// windows are shallower than this (the models benchmark run after run against the tiles, one
// thread, batch 16, Intel Xeon: 256->512 56x56 s2 (gw = 64) 13.3-13.7 -> 9.25-9.28 ms;
// 512->1024 28x28 s2 (128) 8.5-8.6 -> 9.2, 1024->2048 14x14 s2 (256) 8.4-8.6 -> 9.3-9.4).
constexpr int64_t kGatherDepth = 128;
// The stacked kernel takes rows the narrow kernel may take (32 channels or fewer) with at least
// this many outputs per input channel; wider rows with cout >= cin.
constexpr int64_t kStackedExpansion = 2;
constexpr int64_t kStackedAnyCout = 64;  // permuted rows this wide or narrower: any cout
// The 4-channel dot kernel takes windows at least this deep, with at most this many output
// vectors each (one register-tile block; paired against the tiles, grouped/SCC, one thread,
// batch 16, caches evicted between calls, two runs each: 256->128 56x56 0.85-0.90 -> 1.26-1.32,
// 512->128 28x28 0.71 -> 0.97-0.98, 576->96 14x14 0.84-0.86 -> 1.01, 384->96 14x14 0.81-0.83 ->
// 0.97-0.98, 256->64 56x56 1.20-1.23 -> 1.28; shallower or wider it lost: 64->64 56x56 (16
// channels) 1.04-1.28 -> 0.77-0.92, 192->64 14x14 (48) 0.72-0.74 -> 0.62-0.63, 576->160 and
// 960->160 7x7 (5 vectors) 0.93-0.98 -> 0.84-0.89).
constexpr int64_t kQuadDepth = 64;
constexpr int64_t kQuadVectors = 4;
// It stores outputs this large past the caches: its vector blocks write each pixel's outputs
// in several strided passes, which the write-allocate misses of a cold output make slow
// (grouped/SCC, one thread, batch 16, the PyTorch path run between calls to evict the caches,
// streaming from 16 MB -> from 1 MB, two runs: 64->384 14x14 0.45 -> 0.91, 96->576 0.50 -> 0.75,
// 256->1024 0.56 -> 0.88, 128->512 28x28 0.88 -> 1.00, 512->2048 7x7 0.61 -> 0.82).
constexpr int64_t kStackedStreamBytes = 1 << 20;

}  // namespace

template <typename T>
bool run_window_gemm(const View<T>& x, const Operand<T>& weight, const T* bias, const Windows& win,
                     const View<T>& y, Activation activation, const View<T>* residual) {
  const Kernels<T>& k = kernels<T>();
  const int64_t L = k.lanes, cd = win.count, cin = x.c, cout = y.c, gw = win.width;
  if (!k.window_gemm || cd > k.interleave_max || L % cd != 0 || (cd & (cd - 1)) != 0) return false;
  const int64_t xs = uniform_pixel_step(x), ys = uniform_pixel_step(y);
  const int64_t rs = residual ? uniform_pixel_step(*residual) : 0;
  // NCHW (unit-stride pixels, no epilogue) for deep windows, where the tiles' kernel is
  // weakest: per image block the inputs are transposed into a pixel-major buffer, and the
  // outputs go back the same way.
  const bool nchw = !xs && x.unit_pixels() && y.unit_pixels() && y.sc >= y.pixels() && !residual &&
                    activation == kNone && gw >= kNchwDepth && x.h * x.w >= kNchwPixels[0] &&
                    x.h * x.w <= kNchwPixels[1];
  // Channels_last inputs whose pixels are not one step apart (a strided 1x1 conv's subsampled
  // view), with windows shallower than kGatherDepth: each block's channel rows are gathered
  // into the same pixel-major buffer.
  const bool gather = !nchw && !xs && (cin == 1 || x.sc == 1) && gw < kGatherDepth;
  if ((!nchw && ((!xs && !gather) || !ys || (residual && !rs))) || !win.interleaves()) return false;
  // A window's outputs in whole vectors: worth it while few lanes are padding.
  const int64_t per_window = Blocks::ceil_div(cout, cd), vectors = Blocks::ceil_div(per_window, L);
  const int64_t ldt = vectors * L;
  if (vectors < 2 || 4 * cout < 3 * cd * ldt) return false;

  // Output groups: `group` vectors of every window, i.e. cd * group * L consecutive output
  // channels; a pixel block's buffer holds one group.
  const int64_t J = k.gemm_vectors, groups = Blocks::ceil_div(vectors, J), group = Blocks::ceil_div(vectors, groups);
  const int64_t ldw = group * L;
  // Weights per window and group [gw][ldw], contiguous (row k: weight column k of outputs
  // j * cd + w for the group's j), so a depth block of them is one run in L1; bias per window
  // [ldt]. Padding lanes get zeros.
  Aligned<T> wt(static_cast<size_t>(cd * groups * gw * ldw)), b(static_cast<size_t>(cd * ldt));
  for (int64_t w = 0; w < cd; ++w) {
    const int64_t outputs = Blocks::ceil_div(cout - w, cd);  // j * cd + w < cout
    for (int64_t g = 0; g * ldw < outputs; ++g)
      transpose_weight(k, weight, g * ldw * cd + w, cd, std::min(ldw, outputs - g * ldw), gw,
                       wt.data() + (w * groups + g) * gw * ldw, ldw);
    if (bias)
      for (int64_t j = 0; j < outputs; ++j) b[size_t(w * ldt + j)] = bias[j * cd + w];
  }
  const int64_t span = cd * group * L;  // buffer elements per pixel
  const int64_t depth = std::min(gw, std::max<int64_t>(8, kWeightBytes / (ldw * int64_t(sizeof(T)))));
  const int64_t row_bytes = std::max(cin, span) * int64_t(sizeof(T));
  // Pixel blocks of the flattened N*H*W pixels (NCHW: parts of images, see PixelParts).
  const int64_t hw = x.h * x.w, pixels = x.n * hw, threads = at::get_num_threads();
  int64_t block = std::clamp<int64_t>(kBlockBytes / row_bytes, 8, kMaxBlock);
  while (block > 8 && Blocks::ceil_div(pixels, block) < 2 * threads) block = Blocks::ceil_div(block, 2);
  const PixelParts blocks(x.n, hw, block, L, nchw);
  block = blocks.block;
  const int64_t count = blocks.count;
  const int64_t grain = std::max<int64_t>(1, kParallelMacs / (block * cout * gw));
  const bool stream = !nchw && cout * pixels * int64_t(sizeof(T)) >= kStreamBytes &&
                      ys * int64_t(sizeof(T)) % 64 == 0 && reinterpret_cast<uintptr_t>(y.data) % 64 == 0;
  // NCHW: pixel-major buffers for the block's inputs (copied in by 16x16 transposes: reading
  // channel rows in place, every weight column is another cache line) and for its outputs
  // before they are transposed back.
  const int64_t ldu = nchw ? odd_lines(cout, L) : 0, ldx = nchw || gather ? odd_lines(cin, L) : 0;

  at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
    T* t = static_cast<T*>(thread_scratch(size_t(block * (span + ldu + ldx)) * sizeof(T)));
    T* u = t + block * span;  // NCHW only: [block][ldu], the outputs in output order
    T* xp = u + block * ldu;  // NCHW and gathered: [block][ldx], the inputs pixel by pixel
    WindowGemmArgs<T> g{};
    g.x_step = ldx ? ldx : xs;
    g.w_step = ldw;
    g.t_step = span;
    InterleaveArgs<T> e{};
    e.t = t;
    e.t_step = span;
    e.ldt = group * L;
    e.windows = cd;
    e.y_step = nchw ? ldu : ys;
    e.r_step = rs;
    e.activation = activation;
    e.stream = stream;
    for (int64_t c = begin; c < end; ++c) {
      int64_t p0, len;
      blocks.range(c, p0, len);
      if (nchw)
        by_image(hw, p0, len, [&](int64_t img, int64_t q, int64_t at, int64_t n) {
          transpose_rows(k, x.data + img * x.sn + q, x.sc, cin, n, xp + at * ldx, ldx);
        });
      if (gather)
        for (int64_t p = p0; p < p0 + len; ++p) {
          const int64_t img = p / hw, q = p % hw;
          std::memcpy(xp + (p - p0) * ldx, x.data + img * x.sn + q / x.w * x.sh + q % x.w * x.sw,
                      size_t(cin) * sizeof(T));
        }
      g.x = ldx ? xp : x.data + p0 * xs;
      g.pixels = len;
      // The next block's inputs are asked for while this one computes (Prefetch; paired, one
      // thread, batch 16: 1024->256 14x14 1.02x, 256->1024 1.05x faster).
      Prefetch next;
      const int64_t steps = Blocks::ceil_div(len, 4) * groups * cd * Blocks::ceil_div(gw, depth);
      if (xs) next = following_pixels(x.data, xs, p0, len, pixels, steps);
      if (gather) next = following_rows(x, p0, len, pixels, steps);
      if (!nchw) g.ahead = &next;
      e.pixels = len;
      for (int64_t v0 = 0; v0 < vectors; v0 += group) {
        g.count = std::min(group, vectors - v0);
        for (int64_t w = 0; w < cd; ++w) {
          g.t = t + w * group * L;
          g.bias = b.data() + w * ldt + v0 * L;
          for (int64_t k0 = 0; k0 < gw; k0 += depth) {
            g.col = win.columns + w * gw + k0;
            g.w = wt.data() + ((w * groups + v0 / group) * gw + k0) * ldw;
            g.depth = std::min(depth, gw - k0);
            g.first = k0 == 0;
            k.window_gemm(g);
          }
        }
        const int64_t base = v0 * L * cd;  // the group's first output channel
        e.cout = std::min(span, cout - base);
        e.y = nchw ? u + base : y.data + p0 * ys + base;
        e.r = residual ? residual->data + p0 * rs + base : nullptr;
        k.interleave(e);
      }
      if (nchw)
        by_image(hw, p0, len, [&](int64_t img, int64_t q, int64_t at, int64_t n) {
          transpose_rows(k, u + at * ldu, ldu, n, cout, y.data + img * y.sn + q, y.sc);
        });
    }
  });
  return true;
}

// The 4-channel dot kernel: channels_last layers with the paper's output assignment and too
// few outputs per window for the window kernel's whole vectors (at cg=4 co=0.5, cout / cd = 8
// for 256->64 and 384->64, 12 for 384->96 and 576->96, 16 for 256->128 and 512->128). Window by window,
// each pixel's window channels are read 4 at a time, broadcast to the G = lanes / 4 outputs a
// vector holds (quad_dots, kernels.h), into a buffer in window order that interleave() writes
// out in output order with the epilogue. Windows must start at multiples of 4 channels (they
// then wrap around the channel axis between groups of 4).
template <typename T>
bool run_quad_dots(const View<T>& x, const Operand<T>& weight, const T* bias, const Windows& win,
                   const View<T>& y, Activation activation, const View<T>* residual) {
  const Kernels<T>& k = kernels<T>();
  const int64_t L = k.lanes, G = L / 4, cd = win.count, cin = x.c, cout = y.c, gw = win.width;
  if (!k.quad_dots || cd > k.interleave_max || L % cd != 0 || (cd & (cd - 1)) != 0) return false;
  if (cout % cd != 0 || gw % 4 != 0 || cin % 4 != 0 || (cout / cd) % G != 0 || gw < kQuadDepth) return false;
  if (cout / cd > kQuadVectors * G) return false;
  const int64_t xs = uniform_pixel_step(x), ys = uniform_pixel_step(y);
  const int64_t rs = residual ? uniform_pixel_step(*residual) : 0;
  if (!xs || !ys || (residual && !rs) || !win.interleaves() || !win.consecutive(cin)) return false;
  for (int64_t w = 0; w < cd; ++w)
    if (win.first(w) % 4 != 0) return false;
  const int64_t pw = cout / cd, vectors = pw / G, quads = gw / 4;
  // Weights per window [quads][vectors][L] (lanes (c, i) of vector v at step q: column 4q + i
  // of the window's output v * G + c, i.e. channel j * cd + w for j = v * G + c); bias and
  // window channels per window, in window order.
  Aligned<T> wt(static_cast<size_t>(cd * quads * vectors * L));
  std::vector<T> b(static_cast<size_t>(cout), T(0));
  std::vector<int64_t> col(static_cast<size_t>(cd * quads));
  for (int64_t w = 0; w < cd; ++w) {
    T* dst = wt.data() + w * quads * vectors * L;
    for (int64_t j = 0; j < pw; ++j) {
      const T* row = weight.data + (j * cd + w) * weight.s0;
      for (int64_t q = 0; q < quads; ++q)
        for (int64_t i = 0; i < 4; ++i)
          dst[(q * vectors + j / G) * L + (j % G) * 4 + i] = row[(4 * q + i) * weight.s1];
      if (bias) b[size_t(w * pw + j)] = bias[j * cd + w];
    }
    for (int64_t q = 0; q < quads; ++q) col[size_t(w * quads + q)] = (win.first(w) + 4 * q) % cin;
  }
  // Buffer per pixel: the cd windows' outputs, then room for interleave()'s whole-vector reads.
  const int64_t t_step = odd_lines(cout + L, L);
  const int64_t row_bytes = std::max(cin, t_step) * int64_t(sizeof(T));
  const int64_t pixels = x.n * x.h * x.w, threads = at::get_num_threads();
  int64_t block = std::clamp<int64_t>(kBlockBytes / row_bytes, 16, kMaxBlock);
  while (block > 16 && Blocks::ceil_div(pixels, block) < 2 * threads) block = Blocks::ceil_div(block, 2);
  const int64_t count = Blocks::ceil_div(pixels, block);
  const int64_t grain = std::max<int64_t>(1, kParallelMacs / (block * cout * gw));
  const bool stream = cout * pixels * int64_t(sizeof(T)) >= kStreamBytes &&
                      ys * int64_t(sizeof(T)) % 64 == 0 && reinterpret_cast<uintptr_t>(y.data) % 64 == 0;
  at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
    T* t = static_cast<T*>(thread_scratch(size_t(block * t_step) * sizeof(T)));
    QuadDotsArgs<T> g{};
    g.x_step = xs;
    g.t_step = t_step;
    g.quads = quads;
    g.count = vectors;
    InterleaveArgs<T> e{};
    e.t = t;
    e.t_step = t_step;
    e.ldt = pw;
    e.windows = cd;
    e.cout = cout;
    e.y_step = ys;
    e.r_step = rs;
    e.activation = activation;
    e.stream = stream;
    for (int64_t c = begin; c < end; ++c) {
      const int64_t p0 = c * block, len = std::min(block, pixels - p0);
      // The next block's inputs are asked for while this one computes, a step per line of the
      // register tile's rows (Prefetch; a step per register tile, at most 8 lines, asked for
      // half of them: paired, 256->128 56x56 0.94 -> 1.47x, 512->128 28x28 1.00 -> 1.39x).
      Prefetch next = following_pixels(x.data, xs, p0, len, pixels, Blocks::ceil_div(len, 8) * cd * (quads / 4));
      g.ahead = &next;
      g.x = x.data + p0 * xs;
      g.pixels = len;
      for (int64_t w = 0; w < cd; ++w) {
        g.col = col.data() + w * quads;
        g.w = wt.data() + w * quads * vectors * L;
        g.bias = bias ? b.data() + w * pw : nullptr;
        g.t = t + w * pw;
        k.quad_dots(g);
      }
      e.y = y.data + p0 * ys;
      e.r = residual ? residual->data + p0 * rs : nullptr;
      e.pixels = len;
      k.interleave(e);
    }
  });
  return true;
}

// The stacked kernel: channels_last layers with the paper's output assignment, consecutive
// windows and cd dividing the vector length, any number of outputs per window. Per pixel block,
// stack() lays each pixel's window channels side by side (weight column k of every window, cd
// values), then stacked_gemm() computes whole vectors of consecutive outputs, each lane reading
// its own window's value from one broadcasting load, and stores them in output order with the
// bias, residual and activation applied in registers: no buffer of window-order outputs.
template <typename T>
bool run_stacked_gemm(const View<T>& x, const Operand<T>& weight, const T* bias, const Windows& win,
                      const View<T>& y, Activation activation, const View<T>* residual) {
  const Kernels<T>& k = kernels<T>();
  const int64_t L = k.lanes, cd = win.count, cin = x.c, cout = y.c, gw = win.width;
  if (!k.stacked_gemm || cd > k.stack_max || L % cd != 0) return false;
  const int64_t xs = uniform_pixel_step(x), ys = uniform_pixel_step(y);
  const int64_t rs = residual ? uniform_pixel_step(*residual) : 0;
  if (!xs || !ys || (residual && !rs) || !win.interleaves() || !win.consecutive(cin)) return false;
  // Rows of at most stack_permute_cin channels are stacked by permutes in registers, from a
  // table of z's used vectors (positions k * cd + w, k < gw) into the row; the others by zips,
  // through a copy of the row extended cyclically where some window reads past its end.
  const bool permute = k.stack_permute && cin <= k.stack_permute_cin;
  // Stacking costs about cd * gw = cin / (1 - co) copies per pixel whatever cout is. Zipped
  // rows, expansions; paired against the window and tiles kernels (grouped/SCC, one thread, batch
  // 16, cg=4 co=0.5, caches evicted between calls): 64->256 56x56 0.57 -> 0.83, 128->512 28x28
  // 0.77 -> 1.00, 256->1024 14x14 0.65 -> 0.88, 64->384 0.59 -> 0.91, 96->576 0.50 -> 0.75,
  // 160->960 7x7 0.67 -> 0.79, 320->1280 0.68 -> 0.70, 512->2048 7x7 0.89 -> 0.82; 64->64 and
  // the projections 0.63-0.86x of their speed on the other kernels (warm caches). Permuted rows
  // too wide for the narrow kernel (33-64 channels) take it whatever cout is (paired, one thread,
  // batch 16, against the tiles: 64->64 56x56 3.66 -> 1.88 ms, 64->48 28x28 0.71 -> 0.42, 64->16
  // 56x56 1.35 -> 1.10); at 32 channels and fewer the narrow kernel is faster. Rows of 65-96
  // channels are permuted for expansions only (paired against the zips, Intel Xeon: 96->576
  // 14x14 0.86-0.87 -> 0.82-0.83 ms, 80->480 14x14 0.68 -> 0.62-0.63, 96->192 28x28 1.56-1.62
  // -> 1.34-1.35). Since the tile keeps its accumulators in registers, every layer too wide for
  // the narrow kernel with at least as many outputs as inputs takes it too (paired in-process
  // against the window, dot and tiles kernels, one thread, batch 16-32, Intel Xeon: 128->128
  // 28x28 3.20 -> 1.90 ms, 256->256 28x28 6.34 -> 4.48, 256->256 14x14 cg=8 1.65 -> 1.05, 512->512
  // 14x14 4.23 -> 3.96, 96->96 28x28 2.15 -> 1.37, 192->288 14x14 1.70 -> 1.08, 128->192 28x28
  // 3.94 -> 2.18); reductions stay off it (512->128 28x28 5.58 -> 6.93, 1024->256 14x14 3.96 ->
  // 4.83, 384->64 14x14 0.87 -> 1.29), and so do rows of 32 channels or fewer short of an
  // expansion (32->32 56x56 1.07 -> 1.38, 32->48 1.09 -> 1.52 against the narrow kernel).
  const bool takes = cin <= k.narrow_cin ? cout >= kStackedExpansion * cin
                                          : cout >= cin || (permute && cin <= kStackedAnyCout);
  if (!takes) return false;
  const int64_t vectors = Blocks::ceil_div(cout, L), ldo = vectors * L, depth = Blocks::round_up(gw, L);
  // Weights per output vector [gw][L] (row k: column k of the vector's outputs), each an odd
  // number of cache lines long; bias [ldo]; zeros past cout.
  const int64_t w_step = odd_lines(gw * L, L);
  Aligned<T> wt(static_cast<size_t>(vectors * w_step)), b(static_cast<size_t>(ldo));
  for (int64_t v = 0; v < vectors; ++v)
    transpose_weight(k, weight, v * L, 1, std::min(L, cout - v * L), gw, wt.data() + v * w_step, L);
  if (bias) std::copy(bias, bias + cout, b.data());
  std::vector<int64_t> first(static_cast<size_t>(cd));
  bool wraps = false;  // zips only: some window reads past the row's end (it wraps, or padding)
  for (int64_t w = 0; w < cd; ++w) {
    first[size_t(w)] = win.first(w);
    wraps |= !permute && win.first(w) + depth > cin;
  }
  const int64_t index_vectors = permute ? Blocks::ceil_div(cd * gw, L) : 0;
  std::vector<int32_t> index(static_cast<size_t>(index_vectors * L), 0);
  for (int64_t m = 0; m < std::min(cd * gw, index_vectors * L); ++m)
    index[size_t(m)] = static_cast<int32_t>((first[size_t(m % cd)] + m / cd) % cin);
  // Depth blocks: one block of weight columns of a register tile's vectors stays in L1.
  const int64_t span = std::max<int64_t>(16, kWeightBytes / (k.gemm_vectors * L * int64_t(sizeof(T))));
  const int64_t depth_blocks = Blocks::ceil_div(gw, span), per_block = Blocks::ceil_div(gw, depth_blocks);
  const int64_t z_step = odd_lines(cd * depth, L), row = wraps ? Blocks::round_up(cin + depth, L) + L : 0;
  const int64_t t_step = depth_blocks > 1 ? odd_lines(ldo, L) : 0;
  const int64_t pixels = x.n * x.h * x.w, threads = at::get_num_threads();
  int64_t block = std::clamp<int64_t>(kBlockBytes / (z_step * int64_t(sizeof(T))), 8, kMaxBlock);
  while (block > 8 && Blocks::ceil_div(pixels, block) < 2 * threads) block = Blocks::ceil_div(block, 2);
  const int64_t count = Blocks::ceil_div(pixels, block);
  const int64_t grain = std::max<int64_t>(1, kParallelMacs / (block * cout * gw));
  const bool stream = cout * pixels * int64_t(sizeof(T)) >= kStackedStreamBytes &&
                      ys * int64_t(sizeof(T)) % 64 == 0 && reinterpret_cast<uintptr_t>(y.data) % 64 == 0;
  at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
    T* z = static_cast<T*>(thread_scratch(size_t(block * (z_step + t_step) + row) * sizeof(T)));
    StackArgs<T> sa{};
    sa.x_step = xs;
    sa.cin = cin;
    sa.first = first.data();
    sa.windows = cd;
    sa.depth = gw;
    sa.z = z;
    sa.z_step = z_step;
    sa.row = wraps ? z + block * (z_step + t_step) : nullptr;
    sa.index = index.data();
    sa.index_vectors = index_vectors;
    StackedGemmArgs<T> g{};
    g.z_step = z_step;
    g.windows = cd;
    g.w_step = w_step;
    g.bias = b.data();
    g.vectors = vectors;
    g.t = z + block * z_step;
    g.t_step = t_step;
    g.cout = cout;
    g.y_step = ys;
    g.r_step = rs;
    g.activation = activation;
    g.stream = stream;
    for (int64_t c = begin; c < end; ++c) {
      const int64_t p0 = c * block, len = std::min(block, pixels - p0);
      sa.x = x.data + p0 * xs;
      sa.pixels = len;
      (permute ? k.stack_permute : k.stack)(sa);
      // The next block's inputs are asked for while this one computes (Prefetch; paired, one
      // thread, batch 16: 64->256 56x56 1.2x, 128->512 28x28 1.2x faster).
      Prefetch next = following_pixels(x.data, xs, p0, len, pixels,
                                       Blocks::ceil_div(len, 4) * depth_blocks * Blocks::ceil_div(vectors, k.gemm_vectors));
      g.ahead = &next;
      g.y = y.data + p0 * ys;
      g.r = residual ? residual->data + p0 * rs : nullptr;
      g.pixels = len;
      for (int64_t k0 = 0; k0 < gw; k0 += per_block) {
        g.z = z + k0 * cd;
        g.w = wt.data() + k0 * L;
        g.depth = std::min(per_block, gw - k0);
        g.first = k0 == 0;
        g.last = k0 + per_block >= gw;
        k.stacked_gemm(g);
      }
    }
  });
  return true;
}

template bool run_stacked_gemm<float>(const View<float>&, const Operand<float>&, const float*, const Windows&,
                                      const View<float>&, Activation, const View<float>*);
template bool run_stacked_gemm<double>(const View<double>&, const Operand<double>&, const double*,
                                       const Windows&, const View<double>&, Activation, const View<double>*);

template bool run_quad_dots<float>(const View<float>&, const Operand<float>&, const float*, const Windows&,
                                   const View<float>&, Activation, const View<float>*);
template bool run_quad_dots<double>(const View<double>&, const Operand<double>&, const double*, const Windows&,
                                    const View<double>&, Activation, const View<double>*);

template bool run_window_gemm<float>(const View<float>&, const Operand<float>&, const float*, const Windows&,
                                     const View<float>&, Activation, const View<float>*);
template bool run_window_gemm<double>(const View<double>&, const Operand<double>&, const double*, const Windows&,
                                      const View<double>&, Activation, const View<double>*);

}  // namespace scc_native

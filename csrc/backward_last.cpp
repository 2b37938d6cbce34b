// The SCC backward window by window, on the forward's window GEMM (window_gemm, kernels.h):
// both gradients are GEMMs on pixel-major rows. Per pixel block, gy goes into window order first (deinterleave(), the
// inverse of the forward's interleave), so a window's outputs are consecutive.
//
// Input gradient, per window w and pixel p: gx[p][first(w) + k] += sum over the window's
// outputs j of gy_w[p][j] * W_w[j][k]: broadcasts of gy times the window's weight rows
// (packed in window order), added onto gx's rows of the block (zeroed first).
// Weight gradient, per window w: gW_w[j][k] += sum over the block's pixels p of gy_w[p][j] *
// x[p][first(w) + k]: broadcasts of the window's outputs times the block's input rows, into the
// chunk's partial gradient.
//
// Taken when every window is whole vectors of consecutive channels (a window that wraps past
// the last channel is two runs, split at a vector: the default geometry's last windows):
// channels_last read and written in place; NCHW (small images, see nchw_input_grad and
// nchw_weight_grad) through pixel-major copies of each block, made by L x L transposes, gy's
// straight into window order, each image cut into parts of whole vectors.
//
// Chunks of pixel blocks are cut by problem size only and their partials summed in chunk
// order: the weight gradient is the same bits for any thread count, and whether or not the
// input gradient is asked for.
#include "drivers.h"

#include <ATen/Parallel.h>

#include <cstring>
#include <vector>

namespace scc_native {
namespace {

constexpr int64_t kWeightBytes = 24 * 1024;  // a depth block of the vectors one GEMM call reuses (L1)
constexpr int64_t kBlockBytes = 256 * 1024;  // a pixel block's rows of gy, x and gx (L2)
constexpr int64_t kMaxBlock = 1024;
constexpr int64_t kMinBlocks = 8;           // blocks at least (so threads have work), independent of threads

// NCHW layers whose gradients run here rather than on the tiles (which read NCHW in place;
// here every block is copied). Paired runs against the tiles, one thread, batch 16-32: the
// input gradient 1.2-1.7x faster at 7x7, 0.83-1.08x at 14x14, 0.53-0.73x at 28x28; the weight
// gradient 1.03-2.0x faster at 14x14 and 7x7, 0.84-1.11x at 28x28.
inline bool nchw_input_grad(int64_t hw) { return hw <= 64; }
inline bool nchw_weight_grad(int64_t hw) { return hw <= 196; }

}  // namespace

template <typename T>
WindowBackward run_window_backward(const View<T>& gy, const View<T>& x, const Operand<T>& weight,
                                   const Windows& win, const View<T>* gx, T* weight_grad) {
  const Kernels<T>& k = kernels<T>();
  const int64_t L = k.lanes, cd = win.count, cin = x.c, cout = gy.c, gw = win.width, vectors = gw / L;
  if (!k.window_gemm || gw % L != 0 || vectors < 2 || cd > k.interleave_max || L % cd != 0 || (cd & (cd - 1)) != 0)
    return {};
  // channels_last (every pixel one step apart), or NCHW with unit-stride pixels through
  // pixel-major copies of each block, for the gradients that pay for the copies.
  const int64_t ys = uniform_pixel_step(gy), xs = weight_grad ? uniform_pixel_step(x) : 1,
                gs = gx ? uniform_pixel_step(*gx) : 1;
  const bool nchw = !ys && gy.unit_pixels() && x.unit_pixels() && (!gx || gx->unit_pixels());
  if ((!nchw && (!ys || !xs || !gs)) || !win.interleaves() || !win.consecutive(cin)) return {};
  if (nchw) {
    if (!nchw_input_grad(x.h * x.w)) gx = nullptr;
    if (!nchw_weight_grad(x.h * x.w)) weight_grad = nullptr;
    if (!gx && !weight_grad) return {};
  }
  // Window w as runs of whole vectors: vectors [0, split[w]) from channel first(w), the rest
  // (if it wraps) from channel 0.
  std::vector<int64_t> split(cd);
  for (int64_t w = 0; w < cd; ++w) {
    const int64_t head = std::min(gw, cin - win.first(w));
    if (head % L != 0) return {};
    split[w] = head / L;
  }
  const auto runs = [&](int64_t w, auto&& run) {  // run(first vector, vectors, first channel)
    run(int64_t(0), split[w], win.first(w));
    if (split[w] < vectors) run(split[w], vectors - split[w], int64_t(0));
  };

  // gy in window order: [pixel][cd][ldm], rows an odd number of lines apart.
  const int64_t ldm = Blocks::round_up(Blocks::ceil_div(cout, cd), L), ldd = odd_lines(cd * ldm, L);
  // Weights in window order (row i: output outputs[i]).
  Aligned<T> wp(static_cast<size_t>(gx ? cout * gw : 0));
  if (gx)
    for (int64_t i = 0; i < cout; ++i) {
      const T* row = weight.data + win.outputs[i] * weight.s0;
      if (weight.s1 == 1) {
        std::copy(row, row + gw, wp.data() + i * gw);
      } else {
        for (int64_t c = 0; c < gw; ++c) wp[size_t(i * gw + c)] = row[c * weight.s1];
      }
    }
  std::vector<int64_t> iota(ldm);  // the input gradient's depth runs over a window's outputs
  for (int64_t j = 0; j < ldm; ++j) iota[j] = j;

  // NCHW: [block][ldx] buffers for the block's inputs and its input gradient.
  const int64_t ldx = nchw ? odd_lines(cin, L) : 0;
  const int64_t pixels = x.n * x.h * x.w, hw = x.h * x.w;
  const int64_t row_bytes = (cout + ldd + 2 * cin + 2 * ldx) * int64_t(sizeof(T));
  int64_t block = std::clamp<int64_t>(kBlockBytes / row_bytes, 16, kMaxBlock);
  while (block > 16 && Blocks::ceil_div(pixels, block) < kMinBlocks) block = Blocks::ceil_div(block, 2);
  const PixelParts blocks(x.n, hw, block, L, nchw);
  block = blocks.block;
  const int64_t count = blocks.count;
  const int64_t chunks = weight_grad ? partial_chunks<T>(cout, gw, count) : count;
  std::vector<T> partial(size_t(weight_grad ? chunks * cout * gw : 0), T(0));
  std::vector<int64_t> pix_col(block);  // the weight gradient's depth runs over pixels
  for (int64_t p = 0; p < block; ++p) pix_col[p] = p * ldd;
  // Depth blocks: the vectors one register tile reuses (window_gemm's blocks of at most
  // gemm_vectors) in L1.
  const int64_t per = Blocks::ceil_div(vectors, Blocks::ceil_div(vectors, k.gemm_vectors));
  const int64_t depth = std::max<int64_t>(8, kWeightBytes / (per * L * int64_t(sizeof(T))));
  const int64_t chunk_macs = count / chunks * block * cout * gw * ((gx ? 1 : 0) + (weight_grad ? 1 : 0));
  const int64_t grain = std::max<int64_t>(1, kParallelMacs / std::max<int64_t>(1, chunk_macs));

  at::parallel_for(0, chunks, grain, [&](int64_t begin, int64_t end) {
    T* gd = static_cast<T*>(thread_scratch(size_t(block * (ldd + 2 * ldx)) * sizeof(T)));
    T* xp = gd + block * ldd;  // NCHW only
    T* gp = xp + block * ldx;  // NCHW only
    DeinterleaveArgs<T> d{};
    d.y_step = ys;
    d.cout = cout;
    d.windows = cd;
    d.t = gd;
    d.t_step = ldd;
    d.ldt = ldm;
    WindowGemmArgs<T> a{};
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      T* acc = weight_grad ? partial.data() + chunk * cout * gw : nullptr;
      for (int64_t b = chunk * count / chunks; b < (chunk + 1) * count / chunks; ++b) {
        int64_t p0, len;
        blocks.range(b, p0, len);
        if (nchw) {  // each window's output rows straight into window order
          by_image(hw, p0, len, [&](int64_t img, int64_t q, int64_t at, int64_t n) {
            for (int64_t w = 0; w < cd; ++w)
              transpose_rows(k, gy.data + img * gy.sn + w * gy.sc + q, cd * gy.sc, win.size(w), n,
                             gd + at * ldd + w * ldm, ldd);
            if (weight_grad) transpose_rows(k, x.data + img * x.sn + q, x.sc, cin, n, xp + at * ldx, ldx);
          });
        } else {
          d.y = gy.data + p0 * ys;
          d.pixels = len;
          k.deinterleave(d);
        }
        const T* xr = nchw ? xp : x.data + p0 * xs;  // the block's input rows
        const int64_t xstep = nchw ? ldx : xs;
        if (gx) {
          T* g = nchw ? gp : gx->data + p0 * gs;
          const int64_t gstep = nchw ? ldx : gs;
          if (gstep == cin) {
            std::memset(g, 0, size_t(len * cin) * sizeof(T));
          } else {
            for (int64_t p = 0; p < len; ++p) std::memset(g + p * gstep, 0, size_t(cin) * sizeof(T));
          }
          a.x_step = ldd;
          a.pixels = len;
          a.w_step = gw;
          a.t_step = gstep;
          a.first = false;
          for (int64_t w = 0; w < cd; ++w) {
            const int64_t m = win.size(w);
            a.x = gd + w * ldm;
            runs(w, [&](int64_t v0, int64_t n, int64_t channel) {
              a.count = n;
              a.t = g + channel;
              for (int64_t k0 = 0; k0 < m; k0 += depth) {
                a.col = iota.data() + k0;
                a.w = wp.data() + (win.offsets[w] + k0) * gw + v0 * L;
                a.depth = std::min(depth, m - k0);
                k.window_gemm(a);
              }
            });
          }
          if (nchw)
            by_image(hw, p0, len, [&](int64_t img, int64_t q, int64_t at, int64_t n) {
              transpose_rows(k, gp + at * ldx, ldx, n, cin, gx->data + img * gx->sn + q, gx->sc);
            });
        }
        if (weight_grad) {
          a.x_step = 1;  // row j: the window's j-th output
          a.w_step = xstep;
          a.t_step = gw;
          a.first = false;
          for (int64_t w = 0; w < cd; ++w) {
            a.x = gd + w * ldm;
            a.pixels = win.size(w);
            runs(w, [&](int64_t v0, int64_t n, int64_t channel) {
              a.count = n;
              a.t = acc + win.offsets[w] * gw + v0 * L;
              for (int64_t d0 = 0; d0 < len; d0 += depth) {
                a.col = pix_col.data() + d0;
                a.w = xr + d0 * xstep + channel;
                a.depth = std::min(depth, len - d0);
                k.window_gemm(a);
              }
            });
          }
        }
      }
    }
  });

  if (weight_grad)
    sum_partials(partial, chunks, win, cout, gw, weight_grad);
  return {gx != nullptr, weight_grad != nullptr};
}

template WindowBackward run_window_backward<float>(const View<float>&, const View<float>&, const Operand<float>&,
                                                   const Windows&, const View<float>*, float*);
template WindowBackward run_window_backward<double>(const View<double>&, const View<double>&,
                                                    const Operand<double>&, const Windows&, const View<double>*,
                                                    double*);

}  // namespace scc_native

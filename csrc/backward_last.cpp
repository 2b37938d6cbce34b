// The channels_last SCC backward window by window, on the forward's window GEMM
// (window_gemm, kernels.h), with no transposes: both gradients are GEMMs read straight from
// pixel-major rows. Per pixel block, gy goes into window order first (deinterleave(), the
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
// the last channel is two runs, split at a vector: the default geometry's last windows), read
// in place. Chunks of pixel blocks are cut by problem size only and their partials summed in
// chunk order: the weight gradient is the same bits for any thread count, and whether or not
// the input gradient is asked for.
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
constexpr int64_t kParallelMacs = 1 << 19;  // work below which a thread is not worth waking
constexpr int64_t kMaxChunks = 16;          // at most this many partial weight gradients,
constexpr int64_t kPartialBytes = 64 << 20;  // of at most this many bytes together

// A row stride of whole vectors and an odd number of 64-byte lines: rows one after another
// fall into every L1 set, not a few (measured: 1.29x on 512->128 28x28 against a 512-byte stride).
inline int64_t odd_lines(int64_t n, int64_t lanes) {
  const int64_t ld = Blocks::round_up(n, lanes);
  return (ld / lanes) % 2 ? ld : ld + lanes;
}

}  // namespace

template <typename T>
bool run_window_backward(const View<T>& gy, const View<T>& x, const Operand<T>& weight, const Windows& win,
                         const View<T>* gx, T* weight_grad) {
  const Kernels<T>& k = kernels<T>();
  const int64_t L = k.lanes, cd = win.count, cin = x.c, cout = gy.c, gw = win.width, vectors = gw / L;
  if (!k.window_gemm || gw % L != 0 || vectors < 2 || cd > k.interleave_max || L % cd != 0 || (cd & (cd - 1)) != 0)
    return false;
  const int64_t ys = uniform_pixel_step(gy), xs = weight_grad ? uniform_pixel_step(x) : 1,
                gs = gx ? uniform_pixel_step(*gx) : 1;
  if (!ys || !xs || !gs || !win.interleaves() || !win.consecutive(cin)) return false;
  // Window w as runs of whole vectors: vectors [0, split[w]) from channel first(w), the rest
  // (if it wraps) from channel 0.
  std::vector<int64_t> split(cd);
  for (int64_t w = 0; w < cd; ++w) {
    const int64_t head = std::min(gw, cin - win.first(w));
    if (head % L != 0) return false;
    split[w] = head / L;
  }
  const auto runs = [&](int64_t w, auto&& run) {  // run(first vector, vectors, first channel)
    run(int64_t(0), split[w], win.first(w));
    if (split[w] < vectors) run(split[w], vectors - split[w], int64_t(0));
  };

  // gy in window order: [pixel][cd][ldm], rows an odd number of lines apart.
  const int64_t ldm = Blocks::round_up(Blocks::ceil_div(cout, cd), L), ldd = odd_lines(cd * ldm, L);
  // Weights in window order (row i: output outputs[i]).
  std::vector<T> wp(size_t(gx ? cout * gw : 0));
  if (gx)
    for (int64_t i = 0; i < cout; ++i)
      for (int64_t c = 0; c < gw; ++c) wp[size_t(i * gw + c)] = weight.data[win.outputs[i] * weight.s0 + c * weight.s1];
  std::vector<int64_t> iota(ldm);  // the input gradient's depth runs over a window's outputs
  for (int64_t j = 0; j < ldm; ++j) iota[j] = j;

  const int64_t pixels = x.n * x.h * x.w;
  const int64_t row_bytes = (cout + ldd + 2 * cin) * int64_t(sizeof(T));
  int64_t block = std::clamp<int64_t>(kBlockBytes / row_bytes, 16, kMaxBlock);
  while (block > 16 && Blocks::ceil_div(pixels, block) < kMinBlocks) block = Blocks::ceil_div(block, 2);
  const int64_t count = Blocks::ceil_div(pixels, block);
  const int64_t chunks =
      weight_grad ? std::clamp<int64_t>(std::min(kMaxChunks, kPartialBytes / (cout * gw * int64_t(sizeof(T)))), 1,
                                        count)
                  : count;
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
    T* gd = static_cast<T*>(thread_scratch(size_t(block * ldd) * sizeof(T)));
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
        const int64_t p0 = b * block, len = std::min(block, pixels - p0);
        d.y = gy.data + p0 * ys;
        d.pixels = len;
        k.deinterleave(d);
        if (gx) {
          T* g = gx->data + p0 * gs;
          if (gs == cin) {
            std::memset(g, 0, size_t(len * cin) * sizeof(T));
          } else {
            for (int64_t p = 0; p < len; ++p) std::memset(g + p * gs, 0, size_t(cin) * sizeof(T));
          }
          a.x_step = ldd;
          a.pixels = len;
          a.w_step = gw;
          a.t_step = gs;
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
        }
        if (weight_grad) {
          a.x_step = 1;  // row j: the window's j-th output
          a.w_step = xs;
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
                a.w = x.data + (p0 + d0) * xs + channel;
                a.depth = std::min(depth, len - d0);
                k.window_gemm(a);
              }
            });
          }
        }
      }
    }
  });

  if (weight_grad) {  // the partials in chunk order; row i of a partial is output outputs[i]
    at::parallel_for(0, cout, std::max<int64_t>(16, kParallelMacs / (chunks * gw)), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        T* dst = weight_grad + win.outputs[i] * gw;
        const T* src = partial.data() + i * gw;
        for (int64_t c = 0; c < gw; ++c) dst[c] = src[c];
        for (int64_t chunk = 1; chunk < chunks; ++chunk) {
          const T* more = src + chunk * cout * gw;
          for (int64_t c = 0; c < gw; ++c) dst[c] += more[c];
        }
      }
    });
  }
  return true;
}

template bool run_window_backward<float>(const View<float>&, const View<float>&, const Operand<float>&,
                                         const Windows&, const View<float>*, float*);
template bool run_window_backward<double>(const View<double>&, const View<double>&, const Operand<double>&,
                                          const Windows&, const View<double>*, double*);

}  // namespace scc_native

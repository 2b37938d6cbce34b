// The SCC forward on CPU: y[n, o, p] = act(bias[o] + sum_k W[o, k] * x[n, columns[w(o)][k], p]
// + residual[n, o, p]), the residual and the activation being optional (the epilogue).
//
// Parallel over pixel blocks. Per block the input rows stay in cache while every window reads
// them: per window, its output rows come from the rows() micro-kernel, written straight into
// the output in output order (NCHW with unit-stride pixels), or into a packed tile that is
// copied out once (channels_last, strided views, bf16/fp16, an image's ragged tail). The
// epilogue runs on each group of rows as soon as rows() has finished them, while they are in
// cache; the residual is read in place where the output is, else packed like the input.
//
// fp32/fp64 layers go first to the stacked kernel (forward_last.cpp: channels_last expansions
// with the paper's output assignment; with at most 32 input channels it stacks each row by
// permutes, and beats the narrow kernel: paired, one thread, batch 16, grouped/SCC, 16->96
// 112x112 1.63 -> 2.37, 24->96 28x28 0.99 -> 1.47, 32->128 0.77 -> 1.06, 24->144 56x56 2.28 ->
// 2.46), then to the narrow kernel (channels_last, few input channels), then to the
// window-by-window kernel (forward_last.cpp: that assignment, enough
// outputs per window; channels_last, or NCHW with deep windows), then to the 4-channel dot
// kernel (forward_last.cpp: channels_last, few outputs per window, deep windows); this driver
// takes the rest.
#include "drivers.h"

#include <ATen/Parallel.h>

#include <vector>

namespace scc_native {
namespace {

// Pixels per block: all input channels of a block in about this many bytes (L2).
constexpr int64_t kInputTileBytes = 192 * 1024;
// Pixels per inner step and weight columns per depth block: a window's input rows for one
// step in about this many bytes (L1).
constexpr int64_t kPanelBytes = 24 * 1024;
constexpr int64_t kMaxBlock = 1024;
// The narrow kernel prefetches its input rows this far ahead, and streams outputs this large.
constexpr int64_t kNarrowAheadBytes = 16 * 1024;
constexpr int64_t kNarrowStreamBytes = 1 << 20;

// What the forward does after the sum: add a residual (nullptr: none), then an activation.
template <typename S>
struct Epilogue {
  Activation activation = kNone;
  const View<S>* residual = nullptr;
  bool residual_is_output = false;  // forward_: the output overwrites the residual

  bool any() const { return activation != kNone || residual; }
};

template <typename T, typename S>
struct Forward {
  const View<S>& x;
  const Operand<T>& weight;
  const T* bias;
  const Windows& win;
  const View<S>& y;
  const Epilogue<S>& epi;
  const Kernels<T>& k = kernels<T>();
  std::vector<int64_t> a_row, a_col, b_row_in, b_row_packed, c_row_in, c_row_packed, r_row_in;
  std::vector<T> init;
  int64_t ld = 0, step = 0, depth_block = 0, x_step = 0;
  const int64_t tile_px = k.lanes * k.rows_vectors;  // pixels of rows()'s register tile
  bool r_place = false;

  Forward(const View<S>& x_, const Operand<T>& w_, const T* b_, const Windows& win_, const View<S>& y_,
          const Epilogue<S>& epi_)
      : x(x_), weight(w_), bias(b_), win(win_), y(y_), epi(epi_) {}

  void run() {
    const int64_t L = k.lanes, cin = x.c, cout = y.c, gw = win.width, threads = at::get_num_threads();
    const bool x_place = can_run_in_place<T>(x), y_place = can_run_in_place<T>(y);
    x_step = uniform_pixel_step(x);
    // A residual that is the output itself is packed before rows() overwrites it.
    r_place = epi.residual && !epi.residual_is_output && can_run_in_place<T>(*epi.residual);
    const bool per_image = cut_per_image(x.pixels(), L, x_place || y_place);
    // Blocks of whole register tiles (rows() runs the pixels in tiles of rows_vectors
    // vectors; a 64-pixel block left a 16-pixel tail of one-vector tiles: 5-10% on 7x7 layers
    // with 1024+ input channels).
    int64_t target = std::clamp<int64_t>(kInputTileBytes / (cin * int64_t(sizeof(T))), 4 * L, kMaxBlock);
    target = std::max(tile_px, target / tile_px * tile_px);
    const Blocks blocks(x.n, x.pixels(), per_image, L, target, 2 * threads);
    ld = packed_ld(blocks.size + L, L, sizeof(T));
    step = std::max<int64_t>(tile_px, kPanelBytes / (gw * int64_t(sizeof(T))) / tile_px * tile_px);
    depth_block = std::max<int64_t>(16, kPanelBytes / (step * int64_t(sizeof(T))));

    // Offsets the micro-kernel reads, in window order (output i of the table is outputs[i]).
    a_row.resize(cout);
    c_row_in.resize(cout);
    c_row_packed.resize(cout);
    r_row_in.resize(epi.residual ? cout : 0);
    a_col.resize(gw);
    b_row_in.resize(win.count * gw);
    b_row_packed.resize(win.count * gw);
    init.resize(bias ? cout : 0);
    for (int64_t i = 0; i < cout; ++i) {
      a_row[i] = win.outputs[i] * weight.s0;
      c_row_in[i] = win.outputs[i] * y.sc;
      c_row_packed[i] = win.outputs[i] * ld;
      if (epi.residual) r_row_in[i] = win.outputs[i] * epi.residual->sc;
      if (bias) init[i] = bias[win.outputs[i]];
    }
    for (int64_t j = 0; j < gw; ++j) a_col[j] = j * weight.s1;
    for (int64_t i = 0; i < win.count * gw; ++i) {
      b_row_in[i] = win.columns[i] * x.sc;
      b_row_packed[i] = win.columns[i] * ld;
    }

    const size_t scratch_elems = size_t((cin + (epi.residual ? 2 : 1) * cout) * ld);
    const int64_t grain = std::max<int64_t>(1, kParallelMacs / (blocks.size * cout * gw));
    at::parallel_for(0, blocks.count, grain, [&](int64_t begin, int64_t end) {
      T* scratch = static_cast<T*>(thread_scratch(scratch_elems * sizeof(T)));
      PixelRuns px;
      for (int64_t b = begin; b < end; ++b) {
        int64_t first, len;
        blocks.range(b, first, len);
        const int64_t main = per_image ? len / L * L : 0;
        if (main > 0) part(first, main, x_place, y_place, scratch, px);
        if (len > main) part(first + main, len - main, false, false, scratch, px);
      }
    });
  }

  // Pixels [first, first + len) of the flattened N*H*W; in place only where allowed (then len
  // is a multiple of the vector length and the pixels lie in one image).
  void part(int64_t first, int64_t len, bool x_in, bool y_in, T* scratch, PixelRuns& px) {
    const int64_t padded = Blocks::round_up(len, k.lanes);
    Tile<T> xt{scratch, ld}, yt{scratch + x.c * ld, ld}, rt{scratch + (x.c + y.c) * ld, ld};
    if (x_in) {
      xt = in_place<T>(x, first);
    } else {
      px.build(x, first, len);
      pack(x, px, x.c, xt.base, ld, padded, k);
    }
    if (y_in) yt = in_place<T>(y, first);
    // The residual is read in place when the output is written in place and it can be.
    const bool r_in = y_in && r_place;
    if (epi.residual) {
      if (r_in) {
        rt = in_place<T>(*epi.residual, first);
      } else {
        px.build(*epi.residual, first, len);
        pack(*epi.residual, px, y.c, rt.base, ld, padded, k);
      }
    }
    const std::vector<int64_t>& b_row = x_in ? b_row_in : b_row_packed;
    const std::vector<int64_t>& c_row = y_in ? c_row_in : c_row_packed;
    const std::vector<int64_t>& r_row = r_in ? r_row_in : c_row_packed;
    EpilogueArgs<T> e{};
    e.r = epi.residual ? rt.base : nullptr;
    e.activation = epi.activation;
    RowsArgs<T> a{};
    a.a = weight.data;
    a.a_col = a_col.data();
    a.depth = win.width;
    a.depth_block = depth_block;
    auto window = [&](int64_t w, int64_t p0) {
      a.b = xt.base + p0;
      a.c = yt.base + p0;
      a.pixels = std::min(step, padded - p0);
      const int64_t first_out = win.offsets[w], m = win.size(w);
      a.b_row = b_row.data() + w * win.width;
      for (int64_t r = 0; r < m; r += k.rows_max) {
        a.a_row = a_row.data() + first_out + r;
        a.c_row = c_row.data() + first_out + r;
        a.init = bias ? init.data() + first_out + r : nullptr;
        const int rows = static_cast<int>(std::min<int64_t>(k.rows_max, m - r));
        k.rows(a, rows);
        if (epi.any()) {  // these rows are finished for these pixels
          e.c = a.c;
          e.c_row = a.c_row;
          if (e.r) {
            e.r = rt.base + p0;
            e.r_row = r_row.data() + first_out + r;
          }
          e.pixels = a.pixels;
          k.epilogue(e, rows);
        }
      }
    };
    // channels_last: the pixels after these (the next block's, or the next thread's) are asked
    // for while these compute, a few lines per register tile.
    Prefetch next;
    if (x_step && !x_in) {
      int64_t groups = 0;  // rows() calls per pixel step
      for (int64_t w = 0; w < win.count; ++w) groups += Blocks::ceil_div(win.size(w), k.rows_max);
      const int64_t tiles = Blocks::ceil_div(padded, tile_px) * groups * Blocks::ceil_div(win.width, depth_block);
      next = following_pixels(x.data, x_step, first, len, x.n * x.pixels(), tiles);
      a.ahead = &next;
    }
    for (int64_t p0 = 0; p0 < padded; p0 += step)
      for (int64_t w = 0; w < win.count; ++w) window(w, p0);
    if (!y_in) {
      px.build(y, first, len);
      unpack(yt.base, ld, y.c, y, px, k);
    }
  }
};

// The narrow kernel (kernels.h, NarrowArgs): channels_last, few input channels, fp32.
template <typename T, typename S>
bool run_narrow(const View<S>& x, const Operand<T>& weight, const T* bias, const Windows& win, const View<S>& y,
                const Epilogue<S>& epi) {
  const Kernels<T>& k = kernels<T>();
  if constexpr (!std::is_same_v<T, S>) {
    return false;
  } else {
    const int64_t xs = uniform_pixel_step(x), ys = uniform_pixel_step(y);
    const int64_t rs = epi.residual ? uniform_pixel_step(*epi.residual) : 0;
    if (!k.narrow || x.c > k.narrow_cin || x.c < 2 || !xs || !ys || (epi.residual && !rs)) return false;
    const int64_t cout = y.c, gw = win.width, ldo = Blocks::round_up(cout, k.lanes);
    Aligned<T> wt(static_cast<size_t>(gw * ldo)), b(static_cast<size_t>(ldo));
    std::vector<int32_t> index(gw * ldo, 0);
    transpose_weight(k, weight, 0, 1, cout, gw, wt.data(), ldo);
    for (int64_t w = 0; w < win.count; ++w)
      for (int64_t i = win.offsets[w]; i < win.offsets[w + 1]; ++i)
        for (int64_t j = 0; j < gw; ++j) index[j * ldo + win.outputs[i]] = static_cast<int32_t>(win.columns[w * gw + j]);
    if (bias) std::copy(bias, bias + cout, b.data());
    NarrowArgs<T> a{};
    a.x_step = xs;
    a.y_step = ys;
    a.r_step = rs;
    a.cin = x.c;
    a.cout = cout;
    a.ldo = ldo;
    a.gw = gw;
    a.weight = wt.data();
    a.index = index.data();
    a.bias = b.data();
    a.activation = epi.activation;
    const int64_t pixels = x.n * x.h * x.w;
    // The input rows 16 KB on are asked for as these compute: the rows of few channels stream
    // past faster than the hardware prefetchers run ahead of them. Outputs over 1 MB are stored
    // past the caches. (Paired, one thread, batch 16, caches evicted between calls, 32->16
    // 112x112: 4.29-4.67 ms -> 2.37-2.55 ms with the prefetch, 1.22-1.97 ms with both; the
    // stores were streamed from 16 MB before, as the window kernel's: 16->96 at 112x112 1.73x,
    // 24->144 at 56x56 1.86x faster when that kernel still took them.)
    a.ahead = std::max<int64_t>(1, kNarrowAheadBytes / (xs * int64_t(sizeof(T))));
    a.stream = cout * pixels * int64_t(sizeof(T)) >= kNarrowStreamBytes && ys * int64_t(sizeof(T)) % 64 == 0 &&
               reinterpret_cast<uintptr_t>(y.data) % 64 == 0;
    const int64_t grain = std::max<int64_t>(64, kParallelMacs / std::max<int64_t>(1, cout * gw));
    at::parallel_for(0, pixels, grain, [&](int64_t begin, int64_t end) {
      NarrowArgs<T> part = a;
      part.x = x.data + begin * xs;
      part.y = y.data + begin * ys;
      part.r = epi.residual ? epi.residual->data + begin * rs : nullptr;
      part.pixels = end - begin;
      k.narrow(part);
    });
    return true;
  }
}

}  // namespace

namespace {

// The forward into `out` (a fresh tensor, or the residual itself for forward_). The window and
// narrow kernels read each residual vector before they store the output vector at the same
// place, so they may overwrite the residual; the tiles pack it first (Epilogue).
void forward_into(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                  const Windows& win, int64_t activation, const at::Tensor* residual, const at::Tensor& out) {
  if (out.numel() == 0) return;
  dispatch_storage(input.scalar_type(), [&](auto storage, auto compute) {
    using S = decltype(storage);
    using T = decltype(compute);
    const Converted<T> w(weight), b(bias);
    const View<S> xv = view_of<S>(input), yv = view_of<S>(out);
    View<S> rv{};
    Epilogue<S> epi;
    epi.activation = static_cast<Activation>(activation);
    if (residual) {
      rv = view_of<S>(*residual);
      epi.residual = &rv;
      epi.residual_is_output = residual->is_same(out);
    }
    const Operand<T> wo = w.operand();
    if constexpr (std::is_same_v<T, S>) {
      if (run_stacked_gemm<T>(xv, wo, b.data(), win, yv, epi.activation, epi.residual)) return;
    }
    if (run_narrow<T, S>(xv, wo, b.data(), win, yv, epi)) return;
    if constexpr (std::is_same_v<T, S>) {
      if (run_window_gemm<T>(xv, wo, b.data(), win, yv, epi.activation, epi.residual)) return;
      if (run_quad_dots<T>(xv, wo, b.data(), win, yv, epi.activation, epi.residual)) return;
    }
    Forward<T, S>(xv, wo, b.data(), win, yv, epi).run();
  });
}

// What both entry points check first; the layer's window table.
Windows checked_call(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                     const at::Tensor& table, int64_t activation) {
  check_operands(input, weight, bias ? &*bias : nullptr);
  TORCH_CHECK(activation >= kNone && activation <= kGelu, "scc_native: unknown activation code ", activation);
  return parse_windows(table, input.size(1), weight.size(0), weight.size(1));
}

void check_residual(const at::Tensor& input, const at::Tensor& residual, at::IntArrayRef shape) {
  TORCH_CHECK(residual.sizes() == shape && residual.scalar_type() == input.scalar_type() && residual.is_cpu(),
              "scc_native: the residual must be a CPU tensor of the output's shape ", shape, " and dtype ",
              input.scalar_type(), ", got ", residual.sizes(), " ", residual.scalar_type());
}

}  // namespace

at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                   const at::Tensor& table, bool channels_last, int64_t activation,
                   const std::optional<at::Tensor>& residual) {
  const Windows win = checked_call(input, weight, bias, table, activation);
  at::Tensor out = empty_like_layout(input, weight.size(0), channels_last);
  if (residual) check_residual(input, *residual, out.sizes());
  forward_into(input, weight, bias, win, activation, residual ? &*residual : nullptr, out);
  return out;
}

void forward_(const at::Tensor& residual, const at::Tensor& input, const at::Tensor& weight,
              const std::optional<at::Tensor>& bias, const at::Tensor& table, int64_t activation) {
  const Windows win = checked_call(input, weight, bias, table, activation);
  check_residual(input, residual, {input.size(0), weight.size(0), input.size(2), input.size(3)});
  TORCH_CHECK(residual.data_ptr() != input.data_ptr(), "scc_native: forward_ cannot write its output over its input");
  forward_into(input, weight, bias, win, activation, &residual, residual);
}

}  // namespace scc_native

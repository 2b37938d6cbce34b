// The SCC backward on CPU: the input gradient
//   gx[n, c, p] = sum over windows w reading c, over outputs o of w: W[o, k_w(c)] * gy[n, o, p]
// and the weight gradient
//   gW[o, k] = sum over n, p: gy[n, o, p] * x[n, columns[w(o)][k], p].
//
// Parallel over chunks of pixel blocks. Per block: per window, the rows() micro-kernel adds
// the window's outputs onto its input rows of gx (the first window to reach a row writes it,
// later ones accumulate; rows no window reads are zero), and the dots() micro-kernel adds
// the block's pixel sums to the chunk's partial weight gradient. The partials are summed in
// chunk order at the end, and chunks are cut by problem size only (never by thread count),
// so the weight gradient is the same bits run after run and for any number of threads.
#include "drivers.h"

#include <ATen/Parallel.h>

#include <cstring>
#include <vector>

namespace scc_native {
namespace {

// Pixels per block: the block's rows of all tensors in about this many bytes (L2).
constexpr int64_t kBlockBytes = 512 * 1024;
constexpr int64_t kMaxBlock = 1024;
// Depth block of the input gradient's sum over a window's outputs (see forward.cpp).
constexpr int64_t kPanelBytes = 24 * 1024;

template <typename T, typename S>
struct Backward {
  const View<S>& gy;
  const View<S>& x;
  const Operand<T>& weight;
  const Windows& win;
  const View<S>* gx;
  T* weight_grad;
  const Kernels<T>& k = kernels<T>();
  int64_t ld = 0, cd = 0, gw = 0, cin = 0, cout = 0;
  std::vector<int64_t> out_w, chan_w, gy_row_in, gy_row_packed, gx_row_in, gx_row_packed, x_row_in, x_row_packed;
  std::vector<uint8_t> seen;    // per window column: an earlier window already wrote that gx row
  std::vector<int64_t> unread;  // input channels no window reads: their gradient is zero
  std::vector<T> partial;       // per chunk, the weight gradient in window order

  Backward(const View<S>& gy_, const View<S>& x_, const Operand<T>& w_, const Windows& win_, const View<S>* gx_,
           T* weight_grad_)
      : gy(gy_), x(x_), weight(w_), win(win_), gx(gx_), weight_grad(weight_grad_) {}

  void run() {
    const int64_t L = k.lanes;
    cd = win.count;
    gw = win.width;
    cin = x.c;
    cout = gy.c;
    const bool gy_place = can_run_in_place<T>(gy), x_place = weight_grad && can_run_in_place<T>(x),
               gx_place = gx && can_run_in_place<T>(*gx);
    const bool per_image = cut_per_image(x.pixels(), L, gy_place || x_place || gx_place);
    const int64_t rows = cout + (gx || weight_grad ? cin : 0);
    const int64_t target = std::clamp<int64_t>(kBlockBytes / (rows * int64_t(sizeof(T))), 4 * L, kMaxBlock);
    // The cut depends on the problem only, never on the thread count (the weight gradient's
    // sums follow the blocks).
    const Blocks blocks(x.n, x.pixels(), per_image, L, target, kMaxChunks);
    ld = packed_ld(blocks.size + L, L, sizeof(T));

    // Offsets the micro-kernels read, in window order (output i of the table is outputs[i]).
    out_w.resize(cout);
    gy_row_in.resize(cout);
    gy_row_packed.resize(cout);
    chan_w.resize(gw);
    for (int64_t i = 0; i < cout; ++i) {
      out_w[i] = win.outputs[i] * weight.s0;
      gy_row_in[i] = win.outputs[i] * gy.sc;
      gy_row_packed[i] = win.outputs[i] * ld;
    }
    for (int64_t j = 0; j < gw; ++j) chan_w[j] = j * weight.s1;
    gx_row_in.resize(cd * gw);
    gx_row_packed.resize(cd * gw);
    x_row_in.resize(cd * gw);
    x_row_packed.resize(cd * gw);
    seen.resize(cd * gw);
    std::vector<uint8_t> reached(cin, 0);
    for (int64_t i = 0; i < cd * gw; ++i) {
      const int64_t c = win.columns[i];
      gx_row_in[i] = gx ? c * gx->sc : 0;
      gx_row_packed[i] = c * ld;
      x_row_in[i] = c * x.sc;
      x_row_packed[i] = c * ld;
      seen[i] = reached[c];
      reached[c] = 1;
    }
    for (int64_t c = 0; c < cin; ++c)
      if (!reached[c]) unread.push_back(c);

    const int64_t chunks = weight_grad ? partial_chunks<T>(cout, gw, blocks.count) : blocks.count;
    partial.assign(weight_grad ? chunks * cout * gw : 0, T(0));
    const size_t scratch_elems = size_t((cout + 2 * cin) * ld);

    const int64_t chunk_macs = blocks.count / chunks * blocks.size * cout * gw * ((gx ? 1 : 0) + (weight_grad ? 1 : 0));
    at::parallel_for(0, chunks, std::max<int64_t>(1, kParallelMacs / std::max<int64_t>(1, chunk_macs)),
                     [&](int64_t begin, int64_t end) {
      T* scratch = static_cast<T*>(thread_scratch(scratch_elems * sizeof(T)));
      PixelRuns px;
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        T* acc = weight_grad ? partial.data() + chunk * cout * gw : nullptr;
        for (int64_t b = chunk * blocks.count / chunks; b < (chunk + 1) * blocks.count / chunks; ++b) {
          int64_t first, len;
          blocks.range(b, first, len);
          const int64_t main = per_image ? len / L * L : 0;
          if (main > 0) part(first, main, gy_place, x_place, gx_place, acc, scratch, px);
          if (len > main) part(first + main, len - main, false, false, false, acc, scratch, px);
        }
      }
    });

    if (weight_grad)
      sum_partials(partial, chunks, win, cout, gw, weight_grad);
  }

  // Pixels [first, first + len); in place only where allowed (len a multiple of the vector
  // length, pixels in one image).
  void part(int64_t first, int64_t len, bool gy_in, bool x_in, bool gx_in, T* acc, T* scratch, PixelRuns& px) {
    const int64_t padded = Blocks::round_up(len, k.lanes);
    Tile<T> gyt{scratch, ld}, xt{scratch + cout * ld, ld}, gxt{scratch + (cout + cin) * ld, ld};
    if (gy_in) {
      gyt = in_place<T>(gy, first);
    } else {
      px.build(gy, first, len);
      pack(gy, px, cout, gyt.base, ld, padded, k);
    }
    const std::vector<int64_t>& gy_row = gy_in ? gy_row_in : gy_row_packed;
    if (gx) {
      if (gx_in) gxt = in_place<T>(*gx, first);
      for (int64_t c : unread) std::memset(gxt.base + c * gxt.ld, 0, padded * sizeof(T));
      const std::vector<int64_t>& gx_row = gx_in ? gx_row_in : gx_row_packed;
      RowsArgs<T> a{};
      a.a = weight.data;
      a.b = gyt.base;
      a.c = gxt.base;
      a.pixels = padded;
      a.depth_block = std::max<int64_t>(16, kPanelBytes / (padded * int64_t(sizeof(T))));
      for (int64_t w = 0; w < cd; ++w) {
        a.a_col = out_w.data() + win.offsets[w];
        a.b_row = gy_row.data() + win.offsets[w];
        a.depth = win.size(w);
        for (int64_t r = 0; r < gw; r += k.rows_max) {
          a.a_row = chan_w.data() + r;
          a.c_row = gx_row.data() + w * gw + r;
          a.accumulate = seen.data() + w * gw + r;
          k.rows(a, static_cast<int>(std::min<int64_t>(k.rows_max, gw - r)));
        }
      }
      if (!gx_in) {
        px.build(*gx, first, len);
        unpack(gxt.base, ld, cin, *gx, px, k);
      }
    }
    if (weight_grad) {
      if (x_in) {
        xt = in_place<T>(x, first);
      } else {
        px.build(x, first, len);
        pack(x, px, cin, xt.base, ld, padded, k);
      }
      const std::vector<int64_t>& x_row = x_in ? x_row_in : x_row_packed;
      DotsArgs<T> d{};
      d.g = gyt.base;
      d.x = xt.base;
      d.pixels = padded;
      d.ld = gw;
      for (int64_t w = 0; w < cd; ++w) {
        const int64_t first_out = win.offsets[w], m = win.size(w);
        for (int64_t r = 0; r < m; r += k.dots_rows) {
          d.g_row = gy_row.data() + first_out + r;
          for (int64_t j = 0; j < gw; j += k.dots_cols) {
            d.x_row = x_row.data() + w * gw + j;
            d.out = acc + (first_out + r) * gw + j;
            k.dots(d, static_cast<int>(std::min<int64_t>(k.dots_rows, m - r)),
                   static_cast<int>(std::min<int64_t>(k.dots_cols, gw - j)));
          }
        }
      }
    }
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_output, const at::Tensor& input,
                                            const at::Tensor& weight, const at::Tensor& table, bool channels_last,
                                            bool input_grad, bool weight_grad) {
  check_operands(input, weight, nullptr);
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == input.size(0) &&
                  grad_output.size(1) == weight.size(0) && grad_output.size(2) == input.size(2) &&
                  grad_output.size(3) == input.size(3) && grad_output.scalar_type() == input.scalar_type(),
              "scc_native: grad_output must be [N, out_channels, H, W] like the forward's output");
  const Windows win = parse_windows(table, input.size(1), weight.size(0), weight.size(1));
  at::Tensor gx = input_grad ? empty_like_layout(input, input.size(1), channels_last) : input.new_empty({0});
  at::Tensor gw = input.new_empty({0});
  dispatch_storage(input.scalar_type(), [&](auto storage, auto compute) {
    using S = decltype(storage);
    using T = decltype(compute);
    at::Tensor gw_t;  // the weight gradient in the compute type
    if (weight_grad) gw_t = at::empty(weight.sizes(), weight.options().dtype(scalar_type_of<T>()));
    if (input.size(0) * input.size(2) * input.size(3) == 0) {
      if (input_grad) gx.zero_();
      if (weight_grad) gw_t.zero_();
    } else {
      const View<S> gx_view = input_grad ? view_of<S>(gx) : View<S>{};
      const View<S> gy_view = view_of<S>(grad_output), x_view = view_of<S>(input);
      const Converted<T> w(weight);
      const Operand<T> wo = w.operand();
      const View<S>* gx_ptr = input_grad ? &gx_view : nullptr;
      T* gw_ptr = weight_grad ? gw_t.data_ptr<T>() : nullptr;
      WindowBackward done;
      if constexpr (std::is_same_v<T, S>) done = run_window_backward<T>(gy_view, x_view, wo, win, gx_ptr, gw_ptr);
      if (done.input_grad) gx_ptr = nullptr;
      if (done.weight_grad) gw_ptr = nullptr;
      if (gx_ptr || gw_ptr) Backward<T, S>(gy_view, x_view, wo, win, gx_ptr, gw_ptr).run();
    }
    if (weight_grad) gw = gw_t.scalar_type() == weight.scalar_type() ? gw_t : gw_t.to(weight.scalar_type());
  });
  return {gx, gw};
}

}  // namespace scc_native

// The SCC forward on CPU: y[n, o, p] = bias[o] + sum_k W[o, k] * x[n, columns[w(o)][k], p].
//
// Parallel over pixel blocks (image x pixel range). Per block the input rows stay in cache
// while every window reads them: per window, its output rows are computed by the rows()
// micro-kernel straight into the output (NCHW, unit-stride pixels) or into a packed tile
// that is then copied out once (channels_last, strided views, bf16/fp16, odd image sizes).
#include "drivers.h"

#include <ATen/Parallel.h>

#include <vector>

namespace scc_native {
namespace {

// Pixels per block: the input tile of all channels in about this many bytes.
constexpr int64_t kInputTileBytes = 192 * 1024;
// Pixels per inner step: one window's input rows in about this many bytes (L1).
constexpr int64_t kWindowPanelBytes = 24 * 1024;
constexpr int64_t kMaxBlock = 1024;

template <typename T, typename S>
void run_forward(const View<S>& x, const Operand<T>& weight, const T* bias, const Windows& win, const View<S>& y) {
  const Kernels<T>& k = kernels<T>();
  const int64_t L = k.lanes, cin = x.c, cout = y.c, gw = win.width;
  const int64_t threads = at::get_num_threads();
  const bool x_place = can_run_in_place<T>(x), y_place = can_run_in_place<T>(y);
  const bool per_image = x.pixels() % L == 0 && (x_place || y_place);
  const int64_t target = std::clamp<int64_t>(kInputTileBytes / (cin * int64_t(sizeof(T))), 4 * L, kMaxBlock);
  const Blocks blocks(x.n, x.pixels(), per_image, L, target, 2 * threads);
  const bool x_in = per_image && x_place, y_in = per_image && y_place;
  const int64_t ld = packed_ld(blocks.size, L, sizeof(T));
  const int64_t ld_x = x_in ? x.sc : ld, ld_y = y_in ? y.sc : ld;
  const int64_t step = std::max<int64_t>(
      L * k.rows_vectors, kWindowPanelBytes / (gw * int64_t(sizeof(T))) / (L * k.rows_vectors) * (L * k.rows_vectors));

  // Offsets the micro-kernel reads, in window order (output i of the table is outputs[i]).
  std::vector<int64_t> a_row(cout), c_row(cout), a_col(gw), b_row(win.count * gw);
  std::vector<T> init(bias ? cout : 0);
  for (int64_t i = 0; i < cout; ++i) {
    a_row[i] = win.outputs[i] * weight.s0;
    c_row[i] = win.outputs[i] * ld_y;
    if (bias) init[i] = bias[win.outputs[i]];
  }
  for (int64_t j = 0; j < gw; ++j) a_col[j] = j * weight.s1;
  for (int64_t i = 0; i < win.count * gw; ++i) b_row[i] = win.columns[i] * ld_x;

  const size_t x_tile = x_in ? 0 : size_t(cin * ld), y_tile = y_in ? 0 : size_t(cout * ld);
  at::parallel_for(0, blocks.count, 1, [&](int64_t begin, int64_t end) {
    T* scratch = static_cast<T*>(thread_scratch((x_tile + y_tile) * sizeof(T)));
    PixelRuns px_x, px_y;
    for (int64_t b = begin; b < end; ++b) {
      int64_t first, len;
      blocks.range(b, first, len);
      const int64_t padded = Blocks::round_up(len, L);
      Tile<T> xt, yt;
      if (x_in) {
        xt = in_place<T>(x, first);
      } else {
        px_x.build(x, first, len);
        xt = {scratch, ld};
        pack(x, px_x, cin, xt.base, ld, padded, k);
      }
      yt = y_in ? in_place<T>(y, first) : Tile<T>{scratch + x_tile, ld};
      for (int64_t p0 = 0; p0 < padded; p0 += step) {
        RowsArgs<T> a{};
        a.a = weight.data;
        a.a_col = a_col.data();
        a.b = xt.base + p0;
        a.depth = gw;
        a.c = yt.base + p0;
        a.pixels = std::min(step, padded - p0);
        for (int64_t w = 0; w < win.count; ++w) {
          const int64_t first_out = win.offsets[w], m = win.size(w);
          a.b_row = b_row.data() + w * gw;
          for (int64_t r = 0; r < m; r += k.rows_max) {
            a.a_row = a_row.data() + first_out + r;
            a.c_row = c_row.data() + first_out + r;
            a.init = bias ? init.data() + first_out + r : nullptr;
            k.rows(a, static_cast<int>(std::min<int64_t>(k.rows_max, m - r)));
          }
        }
      }
      if (!y_in) {
        px_y.build(y, first, len);
        unpack(yt.base, ld, cout, y, px_y, k);
      }
    }
  });
}

}  // namespace

at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                   const at::Tensor& table, bool channels_last) {
  check_operands(input, weight, bias ? &*bias : nullptr);
  const Windows win = parse_windows(table, input.size(1), weight.size(0), weight.size(1));
  at::Tensor out = empty_like_layout(input, weight.size(0), channels_last);
  if (out.numel() == 0) return out;
  dispatch_storage(input.scalar_type(), [&](auto storage, auto compute) {
    using S = decltype(storage);
    using T = decltype(compute);
    const Converted<T> w(weight), b(bias);
    run_forward<T, S>(view_of<S>(input), w.operand(), b.data(), win, view_of<S>(out));
  });
  return out;
}

}  // namespace scc_native

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
// At most this many partial weight gradients, of at most this many bytes together.
constexpr int64_t kMaxChunks = 16;
constexpr int64_t kPartialBytes = 64 << 20;

template <typename T, typename S>
void run_backward(const View<S>& gy, const View<S>& x, const Operand<T>& weight, const Windows& win,
                  const View<S>* gx, T* weight_grad) {
  const Kernels<T>& k = kernels<T>();
  const int64_t L = k.lanes, cin = x.c, cout = gy.c, gw = win.width, cd = win.count;
  const int64_t threads = at::get_num_threads();
  const bool gy_place = can_run_in_place<T>(gy), x_place = weight_grad && can_run_in_place<T>(x),
             gx_place = gx && can_run_in_place<T>(*gx);
  const bool per_image = x.pixels() % L == 0 && (gy_place || x_place || gx_place);
  const int64_t rows = cout + (gx || weight_grad ? cin : 0);
  const int64_t target = std::clamp<int64_t>(kBlockBytes / (rows * int64_t(sizeof(T))), 4 * L, kMaxBlock);
  const Blocks blocks(x.n, x.pixels(), per_image, L, target, 2 * threads);
  const bool gy_in = per_image && gy_place, x_in = per_image && x_place, gx_in = per_image && gx_place;
  const int64_t ld = packed_ld(blocks.size, L, sizeof(T));
  const int64_t ld_gy = gy_in ? gy.sc : ld, ld_x = x_in ? x.sc : ld, ld_gx = gx_in ? gx->sc : ld;

  // Offsets the micro-kernels read, in window order (output i of the table is outputs[i]).
  std::vector<int64_t> out_w(cout), gy_row(cout), chan_w(gw), gx_row(cd * gw), x_row(cd * gw);
  std::vector<uint8_t> seen(cd * gw);
  std::vector<int64_t> unread;  // input channels no window reads: their gradient is zero
  for (int64_t i = 0; i < cout; ++i) {
    out_w[i] = win.outputs[i] * weight.s0;
    gy_row[i] = win.outputs[i] * ld_gy;
  }
  for (int64_t j = 0; j < gw; ++j) chan_w[j] = j * weight.s1;
  std::vector<uint8_t> reached(cin, 0);
  for (int64_t i = 0; i < cd * gw; ++i) {
    const int64_t c = win.columns[i];
    gx_row[i] = c * ld_gx;
    x_row[i] = c * ld_x;
    seen[i] = reached[c];
    reached[c] = 1;
  }
  for (int64_t c = 0; c < cin; ++c)
    if (!reached[c]) unread.push_back(c);

  const int64_t chunks = weight_grad
      ? std::clamp<int64_t>(std::min(kMaxChunks, kPartialBytes / (cout * gw * int64_t(sizeof(T)))), 1, blocks.count)
      : blocks.count;
  std::vector<T> partial(weight_grad ? chunks * cout * gw : 0);
  const size_t gy_tile = gy_in ? 0 : size_t(cout * ld), x_tile = (weight_grad && !x_in) ? size_t(cin * ld) : 0,
               gx_tile = (gx && !gx_in) ? size_t(cin * ld) : 0;

  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    T* scratch = static_cast<T*>(thread_scratch((gy_tile + x_tile + gx_tile) * sizeof(T)));
    PixelRuns px_gy, px_x, px_gx;
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      T* acc = weight_grad ? partial.data() + chunk * cout * gw : nullptr;
      for (int64_t b = chunk * blocks.count / chunks; b < (chunk + 1) * blocks.count / chunks; ++b) {
        int64_t first, len;
        blocks.range(b, first, len);
        const int64_t padded = Blocks::round_up(len, L);
        Tile<T> gyt{scratch, ld}, xt{scratch + gy_tile, ld}, gxt{scratch + gy_tile + x_tile, ld};
        if (gy_in) {
          gyt = in_place<T>(gy, first);
        } else {
          px_gy.build(gy, first, len);
          pack(gy, px_gy, cout, gyt.base, ld, padded, k);
        }
        if (gx) {
          if (gx_in) gxt = in_place<T>(*gx, first);
          for (int64_t c : unread) std::memset(gxt.base + c * gxt.ld, 0, padded * sizeof(T));
          RowsArgs<T> a{};
          a.a = weight.data;
          a.b = gyt.base;
          a.c = gxt.base;
          a.pixels = padded;
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
            px_gx.build(*gx, first, len);
            unpack(gxt.base, ld, cin, *gx, px_gx, k);
          }
        }
        if (weight_grad) {
          if (x_in) {
            xt = in_place<T>(x, first);
          } else {
            px_x.build(x, first, len);
            pack(x, px_x, cin, xt.base, ld, padded, k);
          }
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
    }
  });

  if (weight_grad) {  // sum the partials in chunk order; row i of a partial is output outputs[i]
    at::parallel_for(0, cout, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        T* dst = weight_grad + win.outputs[i] * gw;
        const T* src = partial.data() + i * gw;
        for (int64_t j = 0; j < gw; ++j) dst[j] = src[j];
        for (int64_t c = 1; c < chunks; ++c) {
          const T* more = src + c * cout * gw;
          for (int64_t j = 0; j < gw; ++j) dst[j] += more[j];
        }
      }
    });
  }
}

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
      run_backward<T, S>(view_of<S>(grad_output), view_of<S>(input), Converted<T>(weight).operand(), win,
                         input_grad ? &gx_view : nullptr, weight_grad ? gw_t.data_ptr<T>() : nullptr);
    }
    if (weight_grad) gw = gw_t.scalar_type() == weight.scalar_type() ? gw_t : gw_t.to(weight.scalar_type());
  });
  return {gx, gw};
}

}  // namespace scc_native

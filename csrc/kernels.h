// The micro-kernels of the native SCC CPU kernel, as seen by the drivers (forward.cpp,
// backward.cpp). They are compiled once per instruction set (isa_*.cpp, from kernels_impl.h)
// and picked at run time for the CPU (kernels.cpp). Plain pointers only: no ATen here.
//
// All data are channel-major tiles: one row per channel, one column per pixel, rows reached
// through element offsets from a base pointer. Pixel counts are multiples of `lanes`.
#pragma once

#include <algorithm>
#include <cstdint>

namespace scc_native {

// Asks for a byte range's cache lines into L2 a few at a time (step(), about `steps` times): a
// driver hands the next pixel block's inputs to the micro-kernels computing this one, so they
// arrive from memory while it computes rather than all at once when they are first read.
struct Prefetch {
  const char* at = nullptr;
  const char* end = nullptr;
  int64_t per_step = 0;

  Prefetch() = default;
  // At most this many lines a step: longer bursts fill the core's miss buffers and stall it
  // (paired, one thread, batch 16, channels_last, caches evicted between calls: 384->64 14x14
  // 1.21x faster with 8 than with up to 144 lines a step).
  static constexpr int64_t kBurst = 8;

  Prefetch(const void* begin, int64_t bytes, int64_t steps)
      : at(static_cast<const char*>(begin)), end(at + std::max<int64_t>(bytes, 0)),
        per_step(lines_per_step(bytes, steps)) {}

  // Lines a step so that `bytes` are asked for in about `steps` steps, at most kBurst.
  static int64_t lines_per_step(int64_t bytes, int64_t steps) {
    return std::min(kBurst, (std::max<int64_t>(bytes, 0) / 64 + steps) / std::max<int64_t>(steps, 1));
  }

  // Or the channel rows of pixels [next, last) of a tensor whose pixels do not lie one step
  // apart, `row` bytes each, pixel p = (img, q) at base + img * sn + q / w * sh + q % w * sw
  // (strides in bytes); `at` and `end` then run over one row at a time.
  const char* base = nullptr;
  int64_t next = 0, last = 0, row = 0, w = 1, hw = 1, sn = 0, sh = 0, sw = 0;

  void step() {
    for (int64_t i = 0; i < per_step; ++i, at += 64) {
      if (at >= end) {
        if (next >= last) return;
        const int64_t img = next / hw, q = next % hw;
        at = base + img * sn + q / w * sh + q % w * sw;
        end = at + row;
        ++next;
      }
      __builtin_prefetch(at, 0, 2);
    }
  }
};

// C_r[p] = init[r] + sum_m A(r, m) * B_m[p]   (or C_r[p] += ... where accumulate[r])
// for r < rows, m < depth, p < pixels, with A(r, m) = a[a_row[r] + a_col[m]],
// B_m = b + b_row[m] and C_r = c + c_row[r].
// Forward: r is an output channel, m a weight column. Input gradient: r is an input channel
// of the window, m one of the window's output channels.
template <typename T>
struct RowsArgs {
  const T* a;
  const int64_t* a_row;
  const int64_t* a_col;
  const T* b;
  const int64_t* b_row;
  int64_t depth;
  int64_t depth_block;  // the sum over m runs in blocks of this many (cache); 0: one block
  T* c;
  const int64_t* c_row;
  const T* init;              // nullptr: start from zero
  const uint8_t* accumulate;  // nullptr: no row accumulates
  int64_t pixels;
  Prefetch* ahead;  // nullptr: none; else one step() per register tile
};

// out[r * ld + j] += sum_p G_r[p] * X_j[p] for r < rows, j < cols, p < pixels, with
// G_r = g + g_row[r] and X_j = x + x_row[j]: the weight gradient's sums over pixels, added
// lane by lane in a fixed order (deterministic).
template <typename T>
struct DotsArgs {
  const T* g;
  const int64_t* g_row;
  const T* x;
  const int64_t* x_row;
  int64_t pixels;
  T* out;
  int64_t ld;
};

// The forward's epilogue, applied in place to rows the forward has finished:
// C_r[p] = act(C_r[p] + R_r[p]) (or act(C_r[p]) without a residual) for r < rows,
// p < pixels, with C_r = c + c_row[r] and R_r = r + r_row[r].
// The codes follow ACTIVATIONS in scc_convert/ops/epilogue.py.
enum Activation : int64_t { kNone = 0, kRelu = 1, kRelu6 = 2, kHardswish = 3, kSilu = 4, kGelu = 5 };

template <typename T>
struct EpilogueArgs {
  T* c;
  const int64_t* c_row;
  const T* r;  // nullptr: no residual
  const int64_t* r_row;
  int64_t pixels;
  Activation activation;
};

// The channels_last forward of a layer with few input channels (cin <= Kernels::narrow_cin),
// vectorised along output channels: an input pixel row fits in two registers, and each
// output vector takes its lanes' window channels from them (one permute per weight column).
//   y[p][o] = act(bias[o] + sum_k weight[k][o] * x[p][index[k][o]] + r[p][o])
// for o < cout, p < pixels, with x[p] = x + p * x_step (channels contiguous), likewise y, r;
// weight and index are [gw][ldo], bias [ldo], ldo = cout rounded up to the vector length.
template <typename T>
struct NarrowArgs {
  const T* x;
  int64_t x_step;
  T* y;
  int64_t y_step;
  const T* r;  // nullptr: no residual
  int64_t r_step;
  int64_t pixels, cin, cout, ldo, gw;
  const T* weight;
  const int32_t* index;
  const T* bias;
  Activation activation;
  int64_t ahead;  // the input rows this many pixels on are prefetched
  bool stream;  // store whole output vectors past the caches (y aligned to the vector, rows too)
};

// The forward window by window (forward_last.cpp). One window's products are a GEMM read
// straight from pixel-major input rows (the channels_last input itself, or an NCHW block's
// copy): per weight column k, R pixels' input channel col[k] broadcast times the window's
// packed weight row (J output vectors):
//   t[p][v][l] = (first ? bias[v][l] : t[p][v][l]) + sum_{k < depth} x[p][col[k]] * w[k][v][l]
// for p < pixels, v < count, with x[p] = x + p * x_step, t[p] = t + p * t_step, and w's rows
// w_step apart. t holds the window's outputs in window order; the driver interleaves them.
template <typename T>
struct WindowGemmArgs {
  const T* x;
  int64_t x_step;
  const int64_t* col;
  const T* w;
  int64_t w_step;
  const T* bias;
  T* t;
  int64_t t_step;
  int64_t pixels, depth, count;  // depth >= 1
  bool first;
  Prefetch* ahead;  // nullptr: none; else one step() per register tile
};

// The forward of one window by 4-channel dot products, for channels_last layers with few
// outputs per window (a vector of them would be mostly padding): a vector holds G = lanes / 4
// outputs x 4 consecutive channels; per step q, each pixel's channels col[q] .. col[q] + 3 are
// broadcast to the G groups once and multiply J weight vectors, and after the last step the
// groups' 4 lanes are summed (two rounds of half shuffles for 4 accumulators):
//   t[p][j] = bias[j] + sum_{q < quads, i < 4} x[p][col[q] + i] * w[q][j / G][(j % G) * 4 + i]
// for p < pixels, j < count * G, with x[p] = x + p * x_step, t[p] = t + p * t_step, w[q] the
// count vectors of step q (bias nullptr: zero).
template <typename T>
struct QuadDotsArgs {
  const T* x;
  int64_t x_step;
  const int64_t* col;
  const T* w;
  const T* bias;
  T* t;
  int64_t t_step;
  int64_t pixels, quads, count;
  Prefetch* ahead;  // nullptr: none; else one step() per 4 steps of a register tile (a line of its rows)
};

// The outputs of cd windows (t[p] + w * ldt: window w's, in order) back into output order,
// where window w's j-th output is channel j * cd + w (the paper's assignment), with the
// epilogue: y[p][j * cd + w] = act(t[p][w * ldt + j] + r[p][j * cd + w]) for j * cd + w < cout.
template <typename T>
struct InterleaveArgs {
  const T* t;
  int64_t t_step, ldt, windows, cout;
  T* y;
  int64_t y_step;
  const T* r;  // nullptr: no residual
  int64_t r_step;
  int64_t pixels;
  Activation activation;
  bool stream;  // store y past the caches (y aligned to the vector, and too large for them)
};

// The inverse of interleave(), for the backward: the output-order rows y[p] (cout channels)
// into window order, t[p][w * ldt + j] = y[p][j * cd + w] for j * cd + w < cout, the padding
// lanes of each window zero (j < ldt, ldt a multiple of the vector length).
template <typename T>
struct DeinterleaveArgs {
  const T* y;
  int64_t y_step, cout, windows;
  T* t;
  int64_t t_step, ldt;
  int64_t pixels;
};

// The channels_last input rows of a block stacked by window, for stacked_gemm():
//   z[p][k * cd + w] = x[p][(first[w] + k) % cin]   for k < depth rounded up to the vector
// length, w < cd (cd divides the vector length), with x[p] = x + p * x_step and z[p] = z + p *
// z_step. `row` is scratch for one row extended cyclically (cin + depth + lanes elements);
// nullptr when every window's reads stay inside the row (first[w] + depth rounded up <= cin).
template <typename T>
struct StackArgs {
  const T* x;
  int64_t x_step, cin;
  const int64_t* first;
  int64_t windows, depth;
  T* z;
  int64_t z_step;
  T* row;
  int64_t pixels;
  // stack_permute() only: z[p]'s first index_vectors vectors, lane l of vector q being
  // x[p][index[q * lanes + l]] (cin <= Kernels::stack_permute_cin; the rest of z[p] unwritten).
  const int32_t* index;
  int64_t index_vectors;
};

// The forward of a layer with the paper's output assignment and cd dividing the vector length,
// vectorised along output channels straight into output order: lane l of output vector v is
// output v * L + l, of window l % cd, so its weight column k reads z[p][k * cd + l % cd] (one
// load of cd values repeated across the vector):
//   y[p][o] = act(bias[o] + sum_{k < depth} w[v][k][l] * z[p][k * cd + o % cd] + r[p][o])
// for o = v * L + l < cout, p < pixels; w[v] = w + v * w_step holds output vector v's weights
// [depth][L] (zeros past cout), bias is [vectors * L]. The sum may run in depth blocks: the
// first starts from the bias, the others from the partial sums in t[p] = t + p * t_step
// ([vectors * L]); all but the last store their sums there, the last stores y.
template <typename T>
struct StackedGemmArgs {
  const T* z;
  int64_t z_step, windows;
  const T* w;
  int64_t w_step;
  const T* bias;
  int64_t depth, vectors, cout;
  T* t;
  int64_t t_step;
  bool first, last;
  T* y;
  int64_t y_step;
  const T* r;  // nullptr: no residual
  int64_t r_step;
  int64_t pixels;
  Activation activation;
  bool stream;  // store whole output vectors past the caches (y aligned to the vector, rows too)
  Prefetch* ahead;  // nullptr: none; else one step() per register tile
};

template <typename T>
struct Kernels {
  const char* isa;
  int lanes;     // elements per vector
  int rows_max;      // most rows one rows() call computes
  int rows_vectors;  // pixel vectors of its register tile
  void (*rows)(const RowsArgs<T>& args, int rows);
  int dots_rows, dots_cols;  // largest dots() tile
  void (*dots)(const DotsArgs<T>& args, int rows, int cols);
  void (*epilogue)(const EpilogueArgs<T>& args, int rows);
  int gemm_vectors;    // most output vectors of one window_gemm() call
  int interleave_max;  // largest cd interleave() takes (a power of two dividing lanes)
  void (*window_gemm)(const WindowGemmArgs<T>& args);
  void (*interleave)(const InterleaveArgs<T>& args);
  void (*quad_dots)(const QuadDotsArgs<T>& args);  // nullptr: vectors of fewer than 4 lanes
  void (*deinterleave)(const DeinterleaveArgs<T>& args);  // takes the same cd as interleave()
  int stack_max;  // largest cd stack() and stacked_gemm() take (a power of two dividing lanes)
  void (*stack)(const StackArgs<T>& args);
  void (*stacked_gemm)(const StackedGemmArgs<T>& args);
  int narrow_cin;  // 0: no narrow kernel for this instruction set and type
  void (*narrow)(const NarrowArgs<T>& args);
  int stack_permute_cin;  // 0: no stack_permute (it permutes whole input rows in registers)
  void (*stack_permute)(const StackArgs<T>& args);
  // One lanes x lanes block between pixel-major rows and a channel-major tile:
  // to_tile: dst[c * ld + i] = src[i][c]; from_tile: dst[i][c] = src[c * ld + i].
  void (*to_tile)(const T* const* src, T* dst, int64_t ld);
  void (*from_tile)(const T* src, int64_t ld, T* const* dst);
};

// The kernels for this CPU: the widest instruction set both the CPU and ATen's
// ATEN_CPU_CAPABILITY allow (AVX-512, AVX2, or portable vectors).
template <typename T>
const Kernels<T>& kernels();

}  // namespace scc_native

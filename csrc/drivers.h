// What forward.cpp and backward.cpp share: argument checks, the dtype dispatch, tensors as
// views, operands converted to the compute type.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "kernels.h"
#include "output_cache.h"
#include "tiles.h"
#include "windows.h"

namespace scc_native {

// activation: an Activation code (kernels.h); residual: added before the activation.
at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                   const at::Tensor& table, bool channels_last, int64_t activation,
                   const std::optional<at::Tensor>& residual);

// act(scc(input) + bias + residual) written over `residual` (the in-place form compiled graphs
// use when the residual is not needed afterwards; it returns nothing, so inductor can call it
// as a mutating op).
void forward_(const at::Tensor& residual, const at::Tensor& input, const at::Tensor& weight,
              const std::optional<at::Tensor>& bias, const at::Tensor& table, int64_t activation);

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_output, const at::Tensor& input,
                                            const at::Tensor& weight, const at::Tensor& table, bool channels_last,
                                            bool input_grad, bool weight_grad);

template <typename T>
constexpr at::ScalarType scalar_type_of() {
  return std::is_same_v<T, double> ? at::kDouble : at::kFloat;
}

// Calls f(S{}, T{}) with S the storage type of `dtype` and T the type it is computed in.
template <typename F>
void dispatch_storage(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: return f(float{}, float{});
    case at::kDouble: return f(double{}, double{});
    case at::kBFloat16: return f(c10::BFloat16{}, float{});
    case at::kHalf: return f(c10::Half{}, float{});
    default: TORCH_CHECK(false, "scc_native: unsupported dtype ", dtype, " (float32, float64, bfloat16, float16)");
  }
}

template <typename S>
View<S> view_of(const at::Tensor& t) {
  return {static_cast<S*>(t.data_ptr()), t.size(0), t.size(1), t.size(2), t.size(3),
          t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// The tensor itself can be a tile: it has the compute type and unit-stride pixels.
template <typename T, typename S>
bool can_run_in_place(const View<S>& v) {
  return std::is_same_v<T, S> && v.unit_pixels();
}

// A 2-D operand in the compute type: element (i, j) at data[i * s0 + j * s1].
template <typename T>
struct Operand {
  const T* data;
  int64_t s0, s1;
};

// dst[c * ld_dst + i] = w(row0 + i * row_step, c) for i < rows, c < cols: a block of weight rows
// transposed, as the kernels pack their weights (in-register transposes where the rows are
// contiguous: element by element, packing took a fifth of a 512->2048 7x7 forward at batch 16
// and most of it at batch 2).
template <typename T>
void transpose_weight(const Kernels<T>& k, const Operand<T>& w, int64_t row0, int64_t row_step, int64_t rows,
                      int64_t cols, T* dst, int64_t ld_dst) {
  if (w.s1 == 1) return transpose_rows(k, w.data + row0 * w.s0, row_step * w.s0, rows, cols, dst, ld_dst);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < cols; ++c) dst[c * ld_dst + i] = w.data[(row0 + i * row_step) * w.s0 + c * w.s1];
}

// A weight or bias in the compute type: the tensor itself, or a converted copy it keeps.
template <typename T>
class Converted {
 public:
  explicit Converted(const at::Tensor& t) : t_(t.scalar_type() == scalar_type_of<T>() ? t : t.to(scalar_type_of<T>())) {}
  explicit Converted(const std::optional<at::Tensor>& t) {
    if (t) t_ = t->to(scalar_type_of<T>()).contiguous();
  }
  Operand<T> operand() const { return {t_.const_data_ptr<T>(), t_.stride(0), t_.stride(1)}; }
  const T* data() const { return t_.defined() ? t_.const_data_ptr<T>() : nullptr; }

 private:
  at::Tensor t_;
};

// The channels_last forward window by window (forward_last.cpp), for T = S = float or double:
// false (nothing written) when the layer does not suit it (strides, output assignment, widths).
template <typename T>
bool run_window_gemm(const View<T>& x, const Operand<T>& weight, const T* bias, const Windows& win,
                     const View<T>& y, Activation activation, const View<T>* residual);

// The channels_last forward by 4-channel dot products (forward_last.cpp), for T = S = float or
// double: false (nothing written) when the layer does not suit it (strides, output assignment,
// window starts, outputs per window).
template <typename T>
bool run_quad_dots(const View<T>& x, const Operand<T>& weight, const T* bias, const Windows& win,
                   const View<T>& y, Activation activation, const View<T>* residual);

// The channels_last forward with stacked rows (forward_last.cpp), for T = S = float or double:
// false (nothing written) when the layer does not suit it (strides, output assignment, cd).
template <typename T>
bool run_stacked_gemm(const View<T>& x, const Operand<T>& weight, const T* bias, const Windows& win,
                      const View<T>& y, Activation activation, const View<T>* residual);

// The backward window by window (backward_last.cpp), for T = S = float or double: which of the
// asked-for gradients it computed (none when the layer does not suit it: strides, widths,
// windows; in NCHW, the gradients for which the tiles are faster).
struct WindowBackward {
  bool input_grad = false, weight_grad = false;
};

template <typename T>
WindowBackward run_window_backward(const View<T>& gy, const View<T>& x, const Operand<T>& weight,
                                   const Windows& win, const View<T>* gx, T* weight_grad);

// Work (multiply-adds) below which a thread is not worth waking: small layers run serially.
constexpr int64_t kParallelMacs = 1 << 19;
// Outputs this large are stored past the caches (streaming stores).
constexpr int64_t kStreamBytes = 16 << 20;

// The backwards keep at most this many partial weight gradients, of at most 64 MB together.
constexpr int64_t kMaxChunks = 16;

// How many partial weight gradients the backwards keep for `count` pixel blocks (cut by problem
// size only, never by thread count, so the sums are the same bits for any thread count).
template <typename T>
int64_t partial_chunks(int64_t cout, int64_t gw, int64_t count) {
  constexpr int64_t kPartialBytes = 64 << 20;
  return std::clamp<int64_t>(std::min(kMaxChunks, kPartialBytes / (cout * gw * int64_t(sizeof(T)))), 1, count);
}

// The weight gradient from per-chunk partials in window order (partial[c * cout * gw + i * gw
// + k]: chunk c's sum for output win.outputs[i], column k), summed in chunk order: the same bits
// for any thread count.
template <typename T>
void sum_partials(const std::vector<T>& partial, int64_t chunks, const Windows& win, int64_t cout, int64_t gw,
                  T* weight_grad) {
  const int64_t grain = std::max<int64_t>(16, kParallelMacs / (chunks * gw));  // rows per task
  at::parallel_for(0, cout, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T* dst = weight_grad + win.outputs[i] * gw;
      const T* src = partial.data() + i * gw;
      for (int64_t k = 0; k < gw; ++k) dst[k] = src[k];
      for (int64_t c = 1; c < chunks; ++c) {
        const T* more = src + c * cout * gw;
        for (int64_t k = 0; k < gw; ++k) dst[k] += more[k];
      }
    }
  });
}

inline void check_operands(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias) {
  TORCH_CHECK(input.dim() == 4 && weight.dim() == 2, "scc_native: input must be 4-D and weight 2-D");
  TORCH_CHECK(input.is_cpu() && weight.is_cpu(), "scc_native: CPU tensors only");
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), "scc_native: weight dtype ", weight.scalar_type(),
              " differs from input dtype ", input.scalar_type());
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0) && bias->is_cpu(),
                "scc_native: bias must be [out_channels] on the CPU");
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), "scc_native: bias dtype ", bias->scalar_type(),
                " differs from input dtype ", input.scalar_type());
  }
}

// An output (or input gradient) of the kernels: [N, channels, H, W] like `input`, from the
// output cache (output_cache.h).
inline at::Tensor empty_like_layout(const at::Tensor& input, int64_t channels, bool channels_last) {
  return empty_output({input.size(0), channels, input.size(2), input.size(3)}, input.options(),
                      channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

}  // namespace scc_native

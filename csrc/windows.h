// The window table of one SCC layer, as scc_convert/geometry.py builds it
// (SCCGeometry.window_table, flattened by scc_convert/ops/native.py into one int64 tensor):
//   [cd, gw, cout, columns (cd * gw), offsets (cd + 1), outputs (cout)]
// columns[w * gw + k]: input channel of weight column k of window w; window w computes the
// output channels outputs[offsets[w] .. offsets[w + 1]). Nothing here derives SCC geometry.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace scc_native {

struct Windows {
  int64_t count, width, outputs_total;
  const int64_t* columns;
  const int64_t* offsets;
  const int64_t* outputs;

  int64_t size(int64_t w) const { return offsets[w + 1] - offsets[w]; }

  // Window w computes outputs w, w + cd, w + 2 cd, ... in that order (the paper's assignment):
  // checked on the table, never assumed.
  bool interleaves() const {
    for (int64_t w = 0; w < count; ++w) {
      if (size(w) != (outputs_total - w + count - 1) / count) return false;
      for (int64_t j = 0; j < size(w); ++j)
        if (outputs[offsets[w] + j] != j * count + w) return false;
    }
    return true;
  }

  // Window w reads the consecutive channels first(w), first(w) + 1, ... (mod in_channels):
  // checked on the table.
  int64_t first(int64_t w) const { return columns[w * width]; }
  bool consecutive(int64_t in_channels) const {
    for (int64_t w = 0; w < count; ++w)
      for (int64_t k = 0; k < width; ++k)
        if (columns[w * width + k] != (first(w) + k) % in_channels) return false;
    return true;
  }
};

inline Windows parse_windows(const at::Tensor& table, int64_t in_channels, int64_t out_channels, int64_t width) {
  TORCH_CHECK(table.scalar_type() == at::kLong && table.dim() == 1 && table.is_contiguous() && table.is_cpu(),
              "scc_native: the window table must be a contiguous 1-D int64 CPU tensor");
  TORCH_CHECK(table.numel() >= 3, "scc_native: window table too short");
  const int64_t* t = table.const_data_ptr<int64_t>();
  Windows w{t[0], t[1], t[2], t + 3, nullptr, nullptr};
  TORCH_CHECK(w.count >= 1 && w.width == width && w.outputs_total == out_channels &&
                  table.numel() == 3 + w.count * w.width + w.count + 1 + w.outputs_total,
              "scc_native: window table does not match the weight [", out_channels, ", ", width, "]");
  w.offsets = w.columns + w.count * w.width;
  w.outputs = w.offsets + w.count + 1;
  TORCH_CHECK(w.offsets[0] == 0 && w.offsets[w.count] == out_channels, "scc_native: bad window offsets");
  for (int64_t i = 0; i < w.count * w.width; ++i)
    TORCH_CHECK(w.columns[i] >= 0 && w.columns[i] < in_channels, "scc_native: window column out of range");
  for (int64_t i = 0; i < out_channels; ++i)
    TORCH_CHECK(w.outputs[i] >= 0 && w.outputs[i] < out_channels, "scc_native: window output out of range");
  return w;
}

}  // namespace scc_native

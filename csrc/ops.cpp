// Registers the native kernels as the CPU implementation of the private ops
// scc_native::forward and scc_native::backward. scc_convert/ops/native.py registers those as
// the CPU kernels of scc::scc_conv2d and scc::scc_conv2d_backward, passing each call the
// window table from scc_convert/geometry.py.
#include <torch/library.h>

#include <string>

#include "drivers.h"
#include "output_cache.h"

namespace scc_native {
namespace {

std::string info() {
  return std::string("isa=") + kernels<float>().isa;
}

}  // namespace

TORCH_LIBRARY(scc_native, m) {
  m.def(
      "forward(Tensor input, Tensor weight, Tensor? bias, Tensor windows, bool channels_last, int activation, "
      "Tensor? residual) -> Tensor");
  m.def(
      "forward_(Tensor(a!) residual, Tensor input, Tensor weight, Tensor? bias, Tensor windows, int activation) "
      "-> ()");
  m.def(
      "backward(Tensor grad_output, Tensor input, Tensor weight, Tensor windows, bool channels_last, "
      "bool input_grad, bool weight_grad) -> (Tensor, Tensor)");
  m.def("info() -> str", &info);
  // The output cache's limit (bytes; negative leaves it) -> [limit, cached bytes, hits, misses].
  m.def("output_cache(int limit) -> int[]", &output_cache_limit);
}

TORCH_LIBRARY_IMPL(scc_native, CPU, m) {
  m.impl("forward", &forward);
  m.impl("forward_", &forward_);
  m.impl("backward", &backward);
}

}  // namespace scc_native

// Output memory of the native kernels: large blocks are kept for reuse when their tensors die.
//
// With glibc's default malloc every block over its mmap threshold (at most 32 MB) is mapped
// on allocation and unmapped on free, so each such output is page-faulted in again, one fault
// per 4 KB, on the next call: measured on this project's 2-core machine, MobileNetV2 at batch
// 16 spent about 100 ms of a 180 ms compiled forward in page faults. The kernels' outputs of
// at least kMinBytes therefore come from a cache of freed blocks (best fit, at most 1/8
// larger than asked), bounded in total: a block that would push the cache over its limit
// evicts others first, and one larger than the limit goes straight back to the system.
// Smaller outputs use torch's CPU allocator as before.
//
// The limit is SCC_CONVERT_OUTPUT_CACHE_MB (default 512; 0 turns the cache off), read once on
// first use, and output_cache_limit() changes it (shrinking it evicts at once). Thread-safe:
// tensors may die on any thread.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>

#include <cstdint>
#include <vector>

namespace scc_native {

// An uninitialised CPU tensor of `sizes` in `format`, with `options`' dtype, from the cache.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat format);

// Sets the cache's limit in bytes when `bytes` >= 0 (negative: leave it); returns
// {limit, cached bytes, hits, misses} after the change (hits/misses count cached-size requests).
std::vector<int64_t> output_cache_limit(int64_t bytes);

}  // namespace scc_native

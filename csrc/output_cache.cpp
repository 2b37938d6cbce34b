// The output cache (output_cache.h).
#include "output_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <unordered_map>

namespace scc_native {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;  // below this, malloc's own bins reuse blocks
constexpr int64_t kDefaultLimitMb = 512;

int64_t limit_from_environment() {
  const char* text = std::getenv("SCC_CONVERT_OUTPUT_CACHE_MB");
  if (text == nullptr || *text == '\0') return kDefaultLimitMb << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(text, &end, 10);
  TORCH_CHECK(end != text && *end == '\0' && mb >= 0,
              "SCC_CONVERT_OUTPUT_CACHE_MB must be a whole number of megabytes >= 0, got '", text, "'");
  return static_cast<int64_t>(mb) << 20;
}

class Cache final : public c10::Allocator {
 public:
  Cache() : limit_(limit_from_environment()) {}

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes) return c10::GetCPUAllocator()->allocate(n);
    void* block = nullptr;
    size_t size = n;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.lower_bound(n);
      if (it != free_.end() && it->first <= n + n / 8) {
        size = it->first;
        block = it->second;
        free_.erase(it);
        cached_ -= size;
        ++hits_;
      } else {
        ++misses_;
      }
    }
    if (block == nullptr) block = c10::alloc_cpu(size);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_[block] = size;
    }
    return {block, block, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  std::vector<int64_t> set_limit(int64_t bytes) {
    std::vector<void*> evicted;
    std::vector<int64_t> out;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (bytes >= 0) {
        limit_ = bytes;
        evict_until(0, evicted);
      }
      out = {limit_, static_cast<int64_t>(cached_), hits_, misses_};
    }
    for (void* p : evicted) c10::free_cpu(p);
    return out;
  }

  static Cache& get() {
    static Cache* cache = new Cache();  // never destroyed: tensors may outlive static destruction
    return *cache;
  }

 private:
  static void release(void* block) { get().put(block); }

  void put(void* block) {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = live_.find(block);
      TORCH_INTERNAL_ASSERT(it != live_.end(), "scc_native: output cache freed a block it does not own");
      const size_t size = it->second;
      live_.erase(it);
      if (static_cast<int64_t>(size) <= limit_) {
        evict_until(size, evicted);
        free_.emplace(size, block);
        cached_ += size;
        block = nullptr;
      }
    }
    for (void* p : evicted) c10::free_cpu(p);
    if (block != nullptr) c10::free_cpu(block);
  }

  // Takes blocks out of the cache (into `evicted`, freed by the caller outside the lock) until
  // `room` more bytes fit under the limit. The caller holds the mutex.
  void evict_until(size_t room, std::vector<void*>& evicted) {
    while (!free_.empty() && static_cast<int64_t>(cached_ + room) > limit_) {
      auto it = free_.begin();
      cached_ -= it->first;
      evicted.push_back(it->second);
      free_.erase(it);
    }
  }

  std::mutex mutex_;
  std::multimap<size_t, void*> free_;        // size -> cached block
  std::unordered_map<void*, size_t> live_;   // block -> size, for blocks in use
  size_t cached_ = 0;
  int64_t limit_;
  int64_t hits_ = 0, misses_ = 0;
};

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat format) {
  return at::detail::empty_generic(sizes, &Cache::get(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), format);
}

std::vector<int64_t> output_cache_limit(int64_t bytes) { return Cache::get().set_limit(bytes); }

}  // namespace scc_native

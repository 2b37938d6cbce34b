// Pixel blocks and channel-major tiles: how the drivers cut the work and move data between
// a tensor (any strides, any of fp32/fp64/bf16/fp16) and the tiles the micro-kernels read.
//
// A tile holds rows = channels, columns = the pixels of one block. It is the tensor itself
// when the tensor's pixels sit at unit stride and it has the compute type (NCHW), otherwise
// a packed copy in per-thread scratch memory (channels_last: a transposing copy).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

#include "kernels.h"

namespace scc_native {

// A 4-D tensor [N, C, H, W] with its strides (elements).
template <typename S>
struct View {
  S* data;
  int64_t n, c, h, w;
  int64_t sn, sc, sh, sw;

  int64_t pixels() const { return h * w; }
  // Pixel q = y * W + x of an image sits at offset q from the image's channel row.
  bool unit_pixels() const { return (w == 1 || sw == 1) && (h == 1 || sh == w); }
};

// A channels_last tensor whose pixels all lie one step apart: pixel q's channel row starts at
// q * step (0: not so).
template <typename S>
int64_t uniform_pixel_step(const View<S>& v) {
  if (v.c > 1 && v.sc != 1) return 0;
  const int64_t step = v.w > 1 ? v.sw : v.h > 1 ? v.sh / v.w : v.sn / (v.h * v.w);
  const bool rows = v.h == 1 || v.sh == v.w * step, images = v.n == 1 || v.sn == v.h * v.w * step;
  return step >= v.c && rows && images ? step : 0;
}

// The pixel blocks of one call. Per image when the tensors can be read in place (NCHW with
// unit-stride pixels): a block never crosses images, holds whole vectors of pixels and, if it
// is an image's last, its ragged tail (main() + tail pixels). Otherwise blocks of the
// flattened N*H*W pixels, all packed.
struct Blocks {
  bool per_image = false;
  int64_t hw = 0, total = 0, lanes = 1, size = 0, per_img = 1, count = 0;

  // target: pixels per block wanted; min_count: fewer blocks than this leave threads idle.
  Blocks(int64_t n, int64_t hw_, bool per_image_, int64_t lanes_, int64_t target, int64_t min_count)
      : per_image(per_image_), hw(hw_), total(n * hw_), lanes(lanes_) {
    const int64_t vectors = per_image ? hw / lanes : ceil_div(total, lanes);
    int64_t per_block = std::clamp<int64_t>(target / lanes, 1, std::max<int64_t>(vectors, 1));
    while (per_block > 1 && (per_image ? n * ceil_div(vectors, per_block) : ceil_div(vectors, per_block)) < min_count)
      per_block = ceil_div(per_block, 2);
    size = per_block * lanes;
    if (per_image) {
      per_img = ceil_div(vectors, per_block);
      count = n * per_img;
    } else {
      count = ceil_div(total, size);
    }
  }

  // First flattened pixel and pixel count of block b.
  void range(int64_t b, int64_t& first, int64_t& len) const {
    if (per_image) {  // the image's vectors spread evenly over its blocks; the last adds the tail
      const int64_t img = b / per_img, j = b % per_img, vectors = hw / lanes;
      const int64_t base = vectors / per_img, extra = vectors % per_img;
      first = img * hw + lanes * (j * base + std::min(j, extra));
      len = lanes * (base + (j < extra ? 1 : 0)) + (j == per_img - 1 ? hw % lanes : 0);
    } else {
      first = b * size;
      len = std::min(size, total - first);
    }
  }

  static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
  static int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
};

// Whether to cut per image: some tensor can be read in place, and the ragged tail of each
// image (packed, padded to a vector) wastes at most 1/8 of the lanes.
inline bool cut_per_image(int64_t hw, int64_t lanes, bool any_in_place) {
  const int64_t pad = (lanes - hw % lanes) % lanes;
  return any_in_place && hw >= lanes && 8 * pad <= hw + pad;
}

// Row stride of packed tiles: the padded block, nudged off multiples of 1 KiB so rows do not
// all land in the same cache sets.
inline int64_t packed_ld(int64_t block, int64_t lanes, int64_t elem_bytes) {
  int64_t ld = Blocks::round_up(block, lanes);
  if ((ld * elem_bytes) % 1024 == 0) ld += lanes;
  return ld;
}

// Per-thread scratch memory, 64-byte aligned, kept and grown across calls.
inline void* thread_scratch(size_t bytes) {
  struct Buffer {
    void* p = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(p); }
  };
  thread_local Buffer buf;
  if (buf.size < bytes) {
    std::free(buf.p);
    buf.size = (bytes + 4095) / 4096 * 4096;
    buf.p = std::aligned_alloc(64, buf.size);
    if (!buf.p) {
      buf.size = 0;
      throw std::bad_alloc();
    }
  }
  return buf.p;
}

// n zeroed elements, 64-byte aligned: packed weights whose vectors never straddle cache lines
// (a std::vector's allocation is only 16-byte aligned).
template <typename T>
class Aligned {
 public:
  explicit Aligned(size_t n) : p_(static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64 + 64))) {
    if (!p_) throw std::bad_alloc();
    std::fill(p_, p_ + n, T(0));
  }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
  ~Aligned() { std::free(p_); }
  T* data() { return p_; }
  const T* data() const { return p_; }
  T& operator[](size_t i) { return p_[i]; }

 private:
  T* p_;
};

// dst[j * ld_dst + i] = src[i * ld_src + j] for i < rows, j < cols: L x L in-register
// transposes, the ragged edges element by element.
template <typename T>
inline void transpose_rows(const Kernels<T>& k, const T* src, int64_t ld_src, int64_t rows, int64_t cols, T* dst,
                    int64_t ld_dst) {
  const int64_t L = k.lanes, full_r = rows / L * L, full_c = cols / L * L;
  const T* from[64];
  for (int64_t i0 = 0; i0 < full_r; i0 += L)
    for (int64_t j0 = 0; j0 < full_c; j0 += L) {
      for (int64_t i = 0; i < L; ++i) from[i] = src + (i0 + i) * ld_src + j0;
      k.to_tile(from, dst + j0 * ld_dst + i0, ld_dst);
    }
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = i < full_r ? full_c : 0; j < cols; ++j) dst[j * ld_dst + i] = src[i * ld_src + j];
}

// The flattened pixels [p0, p0 + len) of images of hw pixels, image by image: run(img, q, at,
// n) for each run [at, at + n) of the range that is pixels q .. q + n of image img.
template <typename F>
inline void by_image(int64_t hw, int64_t p0, int64_t len, F&& run) {
  for (int64_t at = 0; at < len;) {
    const int64_t img = (p0 + at) / hw, q = (p0 + at) % hw, n = std::min(len - at, hw - q);
    run(img, q, at, n);
    at += n;
  }
}

// The pixel blocks of the window kernels (forward_last.cpp, backward_last.cpp): blocks of the
// flattened N*H*W pixels of about `block` pixels, or, for NCHW copies of images of two vectors
// or more (cut_images), each image cut into equal parts of whole vectors, so the copies' L x L
// transposes meet a ragged edge only at an image's end.
struct PixelParts {
  int64_t hw = 0, pixels = 0, block = 0, parts = 0, count = 0;

  PixelParts(int64_t n, int64_t hw_, int64_t block_, int64_t lanes, bool cut_images)
      : hw(hw_), pixels(n * hw_), block(block_) {
    if (cut_images && hw >= 2 * lanes) {
      const int64_t size = Blocks::round_up(Blocks::ceil_div(hw, Blocks::ceil_div(hw, block)), lanes);
      parts = Blocks::ceil_div(hw, size);
      block = Blocks::round_up(Blocks::ceil_div(hw, parts), lanes);
      count = n * parts;
    } else {
      count = Blocks::ceil_div(pixels, block);
    }
  }

  // Block b: flattened pixels [p0, p0 + len).
  void range(int64_t b, int64_t& p0, int64_t& len) const {
    if (parts) {
      const int64_t q = b % parts * block;
      p0 = b / parts * hw + q;
      len = std::min(block, hw - q);
    } else {
      p0 = b * block;
      len = std::min(block, pixels - p0);
    }
  }
};

// A row stride of whole vectors and an odd number of 64-byte lines: rows one after another
// fall into every L1 set, not a few (measured: the window backward's weight gradient 1.29x
// faster on 512->128 28x28 than with a 512-byte stride).
inline int64_t odd_lines(int64_t n, int64_t lanes) {
  const int64_t ld = Blocks::round_up(n, lanes);
  return (ld / lanes) % 2 ? ld : ld + lanes;
}

// Where one tensor's rows of one block are: in place, or packed into `scratch`.
template <typename T>
struct Tile {
  T* base;
  int64_t ld;
};

// The tensor's own rows for the block at flattened pixel `first` (only for T == S: the
// drivers use it where can_run_in_place holds).
template <typename T, typename S>
Tile<T> in_place(const View<S>& v, int64_t first) {
  if constexpr (std::is_same_v<T, S>) {
    const int64_t img = first / v.pixels(), q = first % v.pixels();
    return {v.data + img * v.sn + q, v.sc};
  } else {
    return {nullptr, 0};
  }
}

// A block's pixels as element offsets from v.data, and as segments of equally spaced
// offsets (a whole image at unit stride, a row of a strided view, one pixel of channels_last).
struct PixelRuns {
  std::vector<int64_t> offset;                      // per pixel
  std::vector<int64_t> start, length, step, index;  // per segment; index: its first pixel

  template <typename S>
  void build(const View<S>& v, int64_t first, int64_t len) {
    offset.resize(len);
    start.clear();
    length.clear();
    step.clear();
    index.clear();
    // The pixel's (image, row, column), stepped along rather than divided out per pixel.
    const int64_t hw = v.h * v.w;
    int64_t img = first / hw, row = first % hw / v.w, col = first % v.w;
    for (int64_t i = 0; i < len; ++i) {
      offset[i] = img * v.sn + row * v.sh + col * v.sw;
      if (++col == v.w) {
        col = 0;
        if (++row == v.h) row = 0, ++img;
      }
      const int64_t d = i > 0 ? offset[i] - offset[i - 1] : 0;
      if (i > 0 && (length.back() == 1 ? d == 1 || d == v.sw : d == step.back())) {
        step.back() = d;
        ++length.back();
      } else {
        start.push_back(offset[i]);
        length.push_back(1);
        step.push_back(1);
        index.push_back(i);
      }
    }
  }
};

// The cache lines of the pixels after [first, first + len) (as many again, up to `total`) of
// a tensor whose pixels lie `step` elements apart, asked for over `steps` steps.
template <typename S>
Prefetch following_pixels(const S* data, int64_t step, int64_t first, int64_t len, int64_t total, int64_t steps) {
  const int64_t after = std::min(total, first + 2 * len) - first - len;
  return Prefetch(data + (first + len) * step, after * step * int64_t(sizeof(S)), steps);
}

// The same for a channels_last tensor whose pixels do not lie one step apart (channels at unit
// stride): the channel rows of the pixels after [first, first + len).
template <typename S>
Prefetch following_rows(const View<S>& v, int64_t first, int64_t len, int64_t total, int64_t steps) {
  Prefetch p;
  const int64_t b = int64_t(sizeof(S)), after = std::min(total, first + 2 * len) - first - len;
  p.base = reinterpret_cast<const char*>(v.data);
  p.next = first + len;
  p.last = p.next + after;
  p.row = v.c * b;
  p.w = v.w;
  p.hw = v.h * v.w;
  p.sn = v.sn * b;
  p.sh = v.sh * b;
  p.sw = v.sw * b;
  p.per_step = Prefetch::lines_per_step(after * p.row, steps);
  return p;
}

template <typename D, typename S>
inline void copy_strided(D* d, const S* s, int64_t n, int64_t step) {
  if (step == 1) {
    for (int64_t i = 0; i < n; ++i) d[i] = static_cast<D>(s[i]);
  } else if (step == 2) {
    for (int64_t i = 0; i < n; ++i) d[i] = static_cast<D>(s[2 * i]);
  } else {
    for (int64_t i = 0; i < n; ++i) d[i] = static_cast<D>(s[i * step]);
  }
}

// tile[c][i] = v[channel c][pixel i] for c < rows, i < len; columns len..padded are zeroed.
template <typename T, typename S>
void pack(const View<S>& v, const PixelRuns& px, int64_t rows, T* tile, int64_t ld, int64_t padded,
          const Kernels<T>& k) {
  const int64_t len = static_cast<int64_t>(px.offset.size());
  const int64_t L = k.lanes;
  int64_t c0 = 0;
  if constexpr (std::is_same_v<T, S>) {
    if (v.sc == 1) {  // channels innermost: transpose
      const T* src[64];
      const T* at[64];
      for (int64_t i0 = 0; i0 < len; i0 += L) {
        for (int64_t i = 0; i < L; ++i) src[i] = v.data + px.offset[std::min(i0 + i, len - 1)];
        // The next pixels' rows are asked for while these are transposed: a 16-pixel group
        // reads 16 rows a line at a time, which the hardware prefetchers follow poorly
        // (paired, one thread, batch 16, channels_last: 256->64 and 64->64 at 56x56 1.15-1.2x).
        const T* next[64];
        for (int64_t i = 0; i < L; ++i) next[i] = v.data + px.offset[std::min(i0 + L + i, len - 1)];
        for (c0 = 0; c0 + L <= rows; c0 += L) {
          for (int64_t i = 0; i < L; ++i) at[i] = src[i] + c0;
          for (int64_t i = 0; i < L; ++i) __builtin_prefetch(next[i] + c0, 0, 3);
          k.to_tile(at, tile + c0 * ld + i0, ld);
        }
      }
      c0 = rows / L * L;
    }
  }
  const size_t segments = px.start.size();
  for (int64_t c = c0; c < rows; ++c) {
    const S* src = v.data + c * v.sc;
    T* dst = tile + c * ld;
    for (size_t r = 0; r < segments; ++r) copy_strided(dst + px.index[r], src + px.start[r], px.length[r], px.step[r]);
  }
  if (padded > len)
    for (int64_t c = 0; c < rows; ++c) std::memset(tile + c * ld + len, 0, (padded - len) * sizeof(T));
}

// v[channel c][pixel i] = tile[c][i] for c < rows, i < len (the inverse of pack).
template <typename T, typename S>
void unpack(const T* tile, int64_t ld, int64_t rows, const View<S>& v, const PixelRuns& px,
            const Kernels<T>& k) {
  const int64_t len = static_cast<int64_t>(px.offset.size());
  const int64_t L = k.lanes;
  if constexpr (std::is_same_v<T, S>) {
    if (v.sc == 1) {  // channels innermost: transpose
      const int64_t full_px = len / L * L, full_c = rows / L * L;
      T* dst[64];
      for (int64_t i0 = 0; i0 < full_px; i0 += L) {
        for (int64_t c0 = 0; c0 < full_c; c0 += L) {
          for (int64_t i = 0; i < L; ++i) dst[i] = v.data + px.offset[i0 + i] + c0;
          k.from_tile(tile + c0 * ld + i0, ld, dst);
        }
      }
      for (int64_t i = 0; i < len; ++i) {  // the channels and pixels left over
        T* d = v.data + px.offset[i];
        for (int64_t c = (i < full_px ? full_c : 0); c < rows; ++c) d[c] = tile[c * ld + i];
      }
      return;
    }
  }
  const size_t segments = px.start.size();
  for (int64_t c = 0; c < rows; ++c) {
    S* dst = v.data + c * v.sc;
    const T* src = tile + c * ld;
    for (size_t r = 0; r < segments; ++r) {
      S* d = dst + px.start[r];
      const T* s = src + px.index[r];
      const int64_t step = px.step[r];
      for (int64_t i = 0; i < px.length[r]; ++i) d[i * step] = static_cast<S>(s[i]);
    }
  }
}

}  // namespace scc_native

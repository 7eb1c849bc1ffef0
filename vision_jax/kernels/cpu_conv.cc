// Direct 2-D convolutions for XLA:CPU, called through XLA's FFI.
//
// Layouts are NHWC images and HWIO kernels, float32, any stride and padding. The
// forward kernel also computes input gradients (cpu_conv.py calls it on the output
// gradient with the flipped, channel-transposed kernel, once per stride phase); the
// weight-gradient kernel reduces over the batch and the image.
//
// Both keep a block of outputs in 16 vector registers and stream the operands past it:
//   forward:  up to 16 output pixels x 16 output channels, or 8 x 32. With a
//             horizontal stride of 1 and 3 or 5 taps per kernel row, each input value
//             is broadcast once for all the taps and pixels that use it; otherwise,
//             per input channel, the weights are loaded once and each pixel's input
//             value is broadcast.
//   weights:  up to 16 input channels x 16 output channels of one tap, or 8 x 32;
//             per output pixel, its gradient is loaded once and each input value is
//             broadcast.
// Each image is first copied into a zero-padded scratch buffer, so the inner loops
// have no bounds checks; images are spread over XLA's intra-op thread pool. Results
// do not depend on thread timing: the weight gradient is summed over fixed chunks of
// the batch in a fixed order.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_kernels.h"

namespace vision_jax {
namespace {

// A convolution's sizes. `oh`/`ow` are the output's; the zero-padded input is
// ((oh - 1) * sy + kh) x ((ow - 1) * sx + kw) with the image at offset
// (pad_top, pad_left), which may be negative (then leading rows or columns are cropped).
struct Geometry {
  int64_t n, h, w, ci, kh, kw, co, oh, ow, sy, sx, pad_top, pad_left;
  int64_t padded_h() const { return (oh - 1) * sy + kh; }
  int64_t padded_w() const { return (ow - 1) * sx + kw; }
  int64_t padded_size() const { return padded_h() * padded_w() * ci; }
};

// How the kernels walk the padded image. With a horizontal stride of 1, the kw taps
// of a kernel row read kw consecutive pixels, so (kx, ci) is one run of kw * ci
// consecutive values, matching the kernel's HWIO layout: the kernels then see a
// single tap of kw * ci channels, which keeps their vector units busy when ci is small.
struct Layout {
  int64_t taps_w, channels, pixel_step, row_stride, tap_step;
};

Layout MakeLayout(const Geometry& g) {
  const bool fold = g.sx == 1;
  return Layout{fold ? 1 : g.kw, fold ? g.kw * g.ci : g.ci, g.sx * g.ci,
                g.padded_w() * g.ci, g.ci};
}

// Copies one HxWxC image into the zero-padded scratch buffer `xp`; only the padding
// is zeroed.
void PadImage(const Geometry& g, const float* x, float* xp) {
  const int64_t hp = g.padded_h(), wp = g.padded_w(), row = wp * g.ci;
  const int64_t c0 = std::clamp<int64_t>(g.pad_left, 0, wp);
  const int64_t c1 = std::clamp<int64_t>(g.w + g.pad_left, c0, wp);
  for (int64_t r = 0; r < hp; ++r) {
    float* out = xp + r * row;
    const int64_t iy = r - g.pad_top;
    if (iy < 0 || iy >= g.h || c1 == c0) {
      std::fill(out, out + row, 0.0f);
      continue;
    }
    std::fill(out, out + c0 * g.ci, 0.0f);
    std::memcpy(out + c0 * g.ci, x + (iy * g.w + c0 - g.pad_left) * g.ci,
                sizeof(float) * (c1 - c0) * g.ci);
    std::fill(out + c1 * g.ci, out + row, 0.0f);
  }
}

// ---------------------------------------------------------------------------
// Forward: y[oy, ox, co] = sum over (ky, kx, ci) of xp[oy*sy+ky, ox*sx+kx, ci] w[ky, kx, ci, co].

// Output pixels ox0..ox0+WB-1 of row oy, channels co0..co0+16*CB-1.
template <int CB, int WB>
inline void ForwardBlock(const Geometry& g, const Layout& l, const float* xp, const float* w,
                         float* y, int64_t oy, int64_t ox0, int64_t co0) {
  const int64_t channels = l.channels, co = g.co, step = l.pixel_step;
  Vec acc[WB][CB];
  for (int j = 0; j < WB; ++j)
    for (int b = 0; b < CB; ++b) acc[j][b] = Vec{};
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    const float* row = xp + (oy * g.sy + ky) * l.row_stride + ox0 * step;
    for (int64_t kx = 0; kx < l.taps_w; ++kx) {
      const float* in = row + kx * l.tap_step;
      const float* wk = w + (ky * l.taps_w + kx) * channels * co + co0;
#pragma GCC unroll 4
      for (int64_t c = 0; c < channels; ++c) {
        Vec wv[CB];
        for (int b = 0; b < CB; ++b) wv[b] = Load(wk + c * co + kLanes * b);
        for (int j = 0; j < WB; ++j) {
          const Vec xv = Broadcast(in[j * step + c]);
          for (int b = 0; b < CB; ++b) acc[j][b] += xv * wv[b];
        }
      }
    }
  }
  float* out = y + (oy * g.ow + ox0) * co + co0;
  for (int j = 0; j < WB; ++j)
    for (int b = 0; b < CB; ++b) Store(out + j * co + kLanes * b, acc[j][b]);
}

// One image. A row's last block overlaps the previous one when WB does not divide
// the width; the overlapping pixels are written twice with the same values.
// The same block for stride 1 and KW taps per kernel row, loading each input value
// once for all the taps that use it: input pixel ox0 + q feeds output pixel ox0 + q - kx
// through tap kx. Per input channel: KW * CB weight vectors and WB + KW - 1 broadcasts
// for WB * KW * CB multiply-adds, against CB and WB * KW for `ForwardBlock`.
template <int CB, int WB, int KW>
inline void ForwardBlockSharedInputs(const Geometry& g, const float* xp, const float* w,
                                     float* y, int64_t oy, int64_t ox0, int64_t co0) {
  const int64_t ci_count = g.ci, co = g.co, row_stride = g.padded_w() * g.ci;
  Vec acc[WB][CB];
  for (int j = 0; j < WB; ++j)
    for (int b = 0; b < CB; ++b) acc[j][b] = Vec{};
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    const float* row = xp + (oy * g.sy + ky) * row_stride + ox0 * ci_count;
    const float* wk = w + ky * KW * ci_count * co + co0;
    for (int64_t c = 0; c < ci_count; ++c) {
      Vec wv[KW][CB];
#pragma GCC unroll 8
      for (int kx = 0; kx < KW; ++kx)
        for (int b = 0; b < CB; ++b) wv[kx][b] = Load(wk + (kx * ci_count + c) * co + kLanes * b);
#pragma GCC unroll 32
      for (int q = 0; q < WB + KW - 1; ++q) {
        const Vec xv = Broadcast(row[q * ci_count + c]);
#pragma GCC unroll 8
        for (int kx = 0; kx < KW; ++kx) {
          const int j = q - kx;
          if (j < 0 || j >= WB) continue;
          for (int b = 0; b < CB; ++b) acc[j][b] += xv * wv[kx][b];
        }
      }
    }
  }
  float* out = y + (oy * g.ow + ox0) * co + co0;
  for (int j = 0; j < WB; ++j)
    for (int b = 0; b < CB; ++b) Store(out + j * co + kLanes * b, acc[j][b]);
}

template <int CB, int WB>
void ForwardImage(const Geometry& g, const float* xp, const float* w, float* y) {
  const Layout l = MakeLayout(g);
  for (int64_t oy = 0; oy < g.oh; ++oy)
    for (int64_t co0 = 0; co0 < g.co; co0 += kLanes * CB)
      for (int64_t ox0 = 0; ox0 < g.ow; ox0 += WB) {
        const int64_t x0 = std::min(ox0, g.ow - WB);
        if (g.sx == 1 && g.kw == 3 && g.ci >= 3) {
          ForwardBlockSharedInputs<CB, WB, 3>(g, xp, w, y, oy, x0, co0);
        } else if (g.sx == 1 && g.kw == 5 && g.ci >= 3) {
          ForwardBlockSharedInputs<CB, WB, 5>(g, xp, w, y, oy, x0, co0);
        } else {
          ForwardBlock<CB, WB>(g, l, xp, w, y, oy, x0, co0);
        }
      }
}

// 16 accumulators: 16 pixels x 16 channels or 8 pixels x 32 channels.
template <int CB>
constexpr int kMaxBlockWidth = CB == 1 ? 16 : 8;

// The block width, up to `max_width` pixels, that covers a row with the fewest extra
// pixels (7 for rows of 14 or 28 with 8 at most, 8 for rows of 16 or 32).
int64_t BlockWidth(int64_t width, int64_t max_width) {
  int64_t best = std::min<int64_t>(width, max_width);
  auto covered = [width](int64_t wb) { return (width + wb - 1) / wb * wb; };
  for (int64_t wb = best - 1; wb >= (best + 1) / 2 + 1; --wb)
    if (covered(wb) < covered(best)) best = wb;
  return best;
}

template <int CB, int WB = kMaxBlockWidth<CB>>
void ForwardImageOfBlockWidth(int64_t width, const Geometry& g, const float* xp,
                              const float* w, float* y) {
  if constexpr (WB > 1) {
    if (width < WB) return ForwardImageOfBlockWidth<CB, WB - 1>(width, g, xp, w, y);
  }
  ForwardImage<CB, WB>(g, xp, w, y);
}

template <int CB>
void ForwardImageAnyWidth(const Geometry& g, const float* xp, const float* w, float* y) {
  ForwardImageOfBlockWidth<CB>(BlockWidth(g.ow, kMaxBlockWidth<CB>), g, xp, w, y);
}

void Forward(ffi::ThreadPool& pool, const Geometry& g, const float* x, const float* w,
             float* y) {
  ParallelFor(pool, g.n, [&](int64_t n) {
    std::vector<float> xp(g.padded_size());
    PadImage(g, x + n * g.h * g.w * g.ci, xp.data());
    float* yn = y + n * g.oh * g.ow * g.co;
    if (g.co % (2 * kLanes) == 0) {
      ForwardImageAnyWidth<2>(g, xp.data(), w, yn);
    } else {
      ForwardImageAnyWidth<1>(g, xp.data(), w, yn);
    }
  });
}

// ---------------------------------------------------------------------------
// Weight gradient: dw[ky, kx, ci, co] = sum over (n, oy, ox) of
// xp[n, oy*sy+ky, ox*sx+kx, ci] dy[n, oy, ox, co].

// Adds one image's contribution to dw for channels ci0..ci0+CIB-1 of tap (ky, kx) and
// output channels co0..co0+16*CB-1.
template <int CB, int CIB>
void WeightGradBlock(const Geometry& g, const Layout& l, const float* xp, const float* dy,
                     float* dw, int64_t ky, int64_t kx, int64_t ci0, int64_t co0) {
  const int64_t co = g.co, step = l.pixel_step;
  Vec acc[CIB][CB];
  for (int i = 0; i < CIB; ++i)
    for (int b = 0; b < CB; ++b) acc[i][b] = Vec{};
  for (int64_t oy = 0; oy < g.oh; ++oy) {
    const float* in = xp + (oy * g.sy + ky) * l.row_stride + kx * l.tap_step + ci0;
    const float* grad = dy + oy * g.ow * co + co0;
    for (int64_t ox = 0; ox < g.ow; ++ox) {
      Vec d[CB];
      for (int b = 0; b < CB; ++b) d[b] = Load(grad + ox * co + kLanes * b);
      const float* in_px = in + ox * step;
      for (int i = 0; i < CIB; ++i) {
        const Vec xv = Broadcast(in_px[i]);
        for (int b = 0; b < CB; ++b) acc[i][b] += xv * d[b];
      }
    }
  }
  float* out = dw + ((ky * l.taps_w + kx) * l.channels + ci0) * co + co0;
  for (int i = 0; i < CIB; ++i)
    for (int b = 0; b < CB; ++b) {
      float* o = out + i * co + kLanes * b;
      Store(o, Load(o) + acc[i][b]);
    }
}

// 16 accumulators: up to 16 channels x 16 lanes or 8 channels x 32 lanes.
template <int CB>
constexpr int kMaxChannelBlock = CB == 1 ? 16 : 8;

template <int CB, int CIB = kMaxChannelBlock<CB>>
void WeightGradBlockOfSize(int64_t size, const Geometry& g, const Layout& l,
                           const float* xp, const float* dy, float* dw, int64_t ky,
                           int64_t kx, int64_t ci0, int64_t co0) {
  if constexpr (CIB > 1) {
    if (size < CIB) {
      return WeightGradBlockOfSize<CB, CIB - 1>(size, g, l, xp, dy, dw, ky, kx, ci0, co0);
    }
  }
  WeightGradBlock<CB, CIB>(g, l, xp, dy, dw, ky, kx, ci0, co0);
}

// Adds one image's contribution to dw, in channel blocks of near-equal size.
template <int CB>
void WeightGradImage(const Geometry& g, const float* xp, const float* dy, float* dw) {
  const Layout l = MakeLayout(g);
  const int64_t blocks = (l.channels + kMaxChannelBlock<CB> - 1) / kMaxChannelBlock<CB>;
  for (int64_t ky = 0; ky < g.kh; ++ky)
    for (int64_t kx = 0; kx < l.taps_w; ++kx)
      for (int64_t block = 0; block < blocks; ++block) {
        const int64_t ci0 = block * l.channels / blocks;
        const int64_t size = (block + 1) * l.channels / blocks - ci0;
        for (int64_t co0 = 0; co0 < g.co; co0 += kLanes * CB)
          WeightGradBlockOfSize<CB>(size, g, l, xp, dy, dw, ky, kx, ci0, co0);
      }
}

void WeightGrad(ffi::ThreadPool& pool, const Geometry& g, const float* x, const float* dy,
                float* dw) {
  const int64_t dw_size = g.kh * g.kw * g.ci * g.co;
  const int64_t chunks =
      std::min<int64_t>(g.n, std::max<int64_t>(pool.num_threads(), 1));
  // Chunk 0 accumulates into dw itself, the others into their own buffers.
  std::vector<float> partial((chunks - 1) * dw_size, 0.0f);
  std::fill(dw, dw + dw_size, 0.0f);
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    float* out = chunk == 0 ? dw : partial.data() + (chunk - 1) * dw_size;
    std::vector<float> xp(g.padded_size());
    for (int64_t n = chunk * g.n / chunks; n < (chunk + 1) * g.n / chunks; ++n) {
      PadImage(g, x + n * g.h * g.w * g.ci, xp.data());
      const float* dyn = dy + n * g.oh * g.ow * g.co;
      if (g.co % (2 * kLanes) == 0) {
        WeightGradImage<2>(g, xp.data(), dyn, out);
      } else {
        WeightGradImage<1>(g, xp.data(), dyn, out);
      }
    }
  });
  for (int64_t chunk = 1; chunk < chunks; ++chunk) {
    const float* p = partial.data() + (chunk - 1) * dw_size;
    for (int64_t i = 0; i < dw_size; ++i) dw[i] += p[i];
  }
}

// ---------------------------------------------------------------------------
// FFI handlers.

// Checks an image x, a kernel (or its gradient) and an output (or its gradient), and
// sets *g to their convolution's geometry.
ffi::Error MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                        ffi::Span<const int64_t> y, int64_t stride_h, int64_t stride_w,
                        int64_t pad_top, int64_t pad_left, Geometry* g) {
  if (x.size() != 4 || w.size() != 4 || y.size() != 4)
    return ffi::Error::InvalidArgument("cpu_conv: operands must be NHWC and HWIO arrays");
  if (x[0] != y[0] || x[3] != w[2] || y[3] != w[3] || y[3] % kLanes != 0)
    return ffi::Error::InvalidArgument("cpu_conv: operand shapes do not match");
  if (y[1] < 1 || y[2] < 1 || w[0] < 1 || w[1] < 1)
    return ffi::Error::InvalidArgument("cpu_conv: empty output or kernel");
  if (stride_h < 1 || stride_w < 1) return ffi::Error::InvalidArgument("cpu_conv: bad stride");
  *g = Geometry{x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2],
                stride_h, stride_w, pad_top, pad_left};
  return ffi::Error::Success();
}

ffi::Error ForwardHandler(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> w, int64_t stride_h, int64_t stride_w,
                          int64_t pad_top, int64_t pad_left, ffi::ResultBuffer<ffi::F32> y) {
  Geometry g;
  if (ffi::Error e = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), stride_h,
                                  stride_w, pad_top, pad_left, &g);
      e.failure())
    return e;
  Forward(pool, g, x.typed_data(), w.typed_data(), y->typed_data());
  return ffi::Error::Success();
}

ffi::Error WeightGradHandler(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                             ffi::Buffer<ffi::F32> dy, int64_t stride_h, int64_t stride_w,
                             int64_t pad_top, int64_t pad_left,
                             ffi::ResultBuffer<ffi::F32> dw) {
  Geometry g;
  if (ffi::Error e = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(),
                                  stride_h, stride_w, pad_top, pad_left, &g);
      e.failure())
    return e;
  WeightGrad(pool, g, x.typed_data(), dy.typed_data(), dw->typed_data());
  return ffi::Error::Success();
}

// Both handlers take two float32 arrays, the strides and the leading padding, and
// return one float32 array.
auto ConvBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("stride_h")
      .Attr<int64_t>("stride_w")
      .Attr<int64_t>("pad_top")
      .Attr<int64_t>("pad_left")
      .Ret<ffi::Buffer<ffi::F32>>();
}

}  // namespace
}  // namespace vision_jax

XLA_FFI_DEFINE_HANDLER_SYMBOL(VisionJaxConvForward, vision_jax::ForwardHandler,
                              vision_jax::ConvBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(VisionJaxConvWeightGrad, vision_jax::WeightGradHandler,
                              vision_jax::ConvBinding());

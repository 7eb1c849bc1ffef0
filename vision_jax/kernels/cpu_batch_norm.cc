// Per-channel sums for batch normalization on XLA:CPU, called through XLA's FFI.
//
// For arrays a and b of shape (..., C) and a per-channel shift:
//   sums[c]     = sum over all other axes of a[..., c]
//   products[c] = sum over all other axes of a[..., c] * (b[..., c] - shift[c])
// in one pass over memory: a = b = x with shift 0 gives the moments of x; a = dy,
// b = x, shift = mean gives the two reductions of the backward pass. XLA reduces each
// sum in its own pass. Vectors of 16 channels accumulate blocks of rows in float32,
// added to float64 totals; rows are split into chunks (a fixed number for a given
// thread count) whose totals are added in order.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_kernels.h"

namespace vision_jax {
namespace {

constexpr int64_t kRowsPerBlock = 64;

void SumRows(const float* a, const float* b, const float* shift, int64_t rows,
             int64_t channels, double* sums, double* products) {
  for (int64_t r0 = 0; r0 < rows; r0 += kRowsPerBlock) {
    const int64_t r1 = std::min(rows, r0 + kRowsPerBlock);
    for (int64_t c0 = 0; c0 < channels; c0 += kLanes) {
      const Vec s = Load(shift + c0);
      Vec sum{}, product{};
      for (int64_t r = r0; r < r1; ++r) {
        const Vec va = Load(a + r * channels + c0);
        sum += va;
        product += va * (Load(b + r * channels + c0) - s);
      }
      for (int i = 0; i < kLanes; ++i) {
        sums[c0 + i] += sum[i];
        products[c0 + i] += product[i];
      }
    }
  }
}

ffi::Error ChannelSumsHandler(ffi::ThreadPool pool, ffi::AnyBuffer a_buffer,
                              ffi::AnyBuffer b_buffer, ffi::Buffer<ffi::F32> shift,
                              ffi::ResultBuffer<ffi::F32> sums,
                              ffi::ResultBuffer<ffi::F32> products) {
  const auto dims = a_buffer.dimensions();
  if (a_buffer.element_type() != ffi::F32 || b_buffer.element_type() != ffi::F32 ||
      dims.size() == 0 || !std::equal(dims.begin(), dims.end(), b_buffer.dimensions().begin(),
                                  b_buffer.dimensions().end()))
    return ffi::Error::InvalidArgument("channel_sums: a and b must be float32 of one shape");
  const int64_t channels = dims.back();
  if (channels % kLanes != 0 || shift.element_count() != static_cast<size_t>(channels))
    return ffi::Error::InvalidArgument("channel_sums: channels must be a multiple of 16");
  const int64_t rows = channels ? a_buffer.element_count() / channels : 0;
  const float* a = static_cast<const float*>(a_buffer.untyped_data());
  const float* b = static_cast<const float*>(b_buffer.untyped_data());

  const int64_t chunks = std::clamp<int64_t>(
      std::min<int64_t>(pool.num_threads(), rows / (4 * kRowsPerBlock)), 1, rows ? rows : 1);
  std::vector<double> totals(2 * chunks * channels, 0.0);
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    const int64_t r0 = chunk * rows / chunks, r1 = (chunk + 1) * rows / chunks;
    double* out = totals.data() + 2 * chunk * channels;
    SumRows(a + r0 * channels, b + r0 * channels, shift.typed_data(), r1 - r0, channels,
            out, out + channels);
  });
  for (int64_t c = 0; c < channels; ++c) {
    double sum = 0.0, product = 0.0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      sum += totals[2 * chunk * channels + c];
      product += totals[(2 * chunk + 1) * channels + c];
    }
    sums->typed_data()[c] = static_cast<float>(sum);
    products->typed_data()[c] = static_cast<float>(product);
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace vision_jax

namespace ffi = xla::ffi;

XLA_FFI_DEFINE_HANDLER_SYMBOL(VisionJaxChannelSums, vision_jax::ChannelSumsHandler,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

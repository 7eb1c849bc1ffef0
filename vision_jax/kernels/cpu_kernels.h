// Pieces shared by the CPU kernels: float32 vectors and a parallel loop on XLA's
// intra-op thread pool.

#ifndef VISION_JAX_KERNELS_CPU_KERNELS_H_
#define VISION_JAX_KERNELS_CPU_KERNELS_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace vision_jax {

namespace ffi = xla::ffi;

constexpr int kLanes = 16;  // float32 lanes in one vector
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec Load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void Store(float* p, Vec v) { std::memcpy(p, &v, sizeof(v)); }
// Written out so that it compiles to one broadcast (`Vec{} + x` costs an add per use:
// 0 + x is not x for x = -0).
inline Vec Broadcast(float x) {
  static_assert(kLanes == 16);
  return Vec{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
}

// Runs body(0..count-1) on the calling thread and the pool's threads. The caller
// takes part, so it never waits on tasks that have not started: no deadlock when
// several devices share the pool. Tasks that start late find no work and return.
template <typename Body>
inline void ParallelFor(ffi::ThreadPool& pool, int64_t count, const Body& body) {
  const int64_t threads = std::min<int64_t>(std::max<int64_t>(pool.num_threads(), 1), count);
  if (threads <= 1) {
    for (int64_t i = 0; i < count; ++i) body(i);
    return;
  }
  struct Shared {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto shared = std::make_shared<Shared>();
  const Body* body_ptr = &body;
  auto work = [shared, count, body_ptr]() {
    for (int64_t i; (i = shared->next.fetch_add(1)) < count;) {
      (*body_ptr)(i);
      if (shared->done.fetch_add(1) + 1 == count) {
        std::lock_guard<std::mutex> lock(shared->mu);
        shared->cv.notify_all();
      }
    }
  };
  for (int64_t t = 1; t < threads; ++t) pool.Schedule(decltype(work)(work));
  work();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait(lock, [&] { return shared->done.load() == count; });
}

}  // namespace vision_jax

#endif  // VISION_JAX_KERNELS_CPU_KERNELS_H_

// CUDA kernel of coar::apply_masks_: one thread per element of the (B, P, C, Q) view, with the
// innermost index varying fastest so neighbouring threads touch neighbouring addresses whether
// the units are channel-first (Q contiguous) or channel-last (C contiguous, Q = 1).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "apply_masks_launch.h"

namespace coar {
namespace {

template <typename T>
__global__ void apply_masks_kernel(T* __restrict__ x, const bool* __restrict__ mask,
                                   const T* __restrict__ fill, MaskView v, int64_t total) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += step) {
    int64_t t = i;
    const int64_t q = t % v.Q;
    t /= v.Q;
    const int64_t c = t % v.C;
    t /= v.C;
    const int64_t p = t % v.P;
    const int64_t b = t / v.P;
    if (mask[(b / v.rows_per_mask) * v.C + c]) {
      x[b * v.sB + p * v.sP + c * v.sC + q * v.sQ] = fill[c];
    }
  }
}

template <typename T>
void launch_typed(void* x, const bool* mask, const void* fill, const MaskView& v,
                  cudaStream_t stream) {
  const int64_t total = v.B * v.P * v.C * v.Q;
  if (total == 0) return;
  constexpr int threads = 256;
  const int64_t wanted = (total + threads - 1) / threads;
  const int blocks = static_cast<int>(wanted < 65535 * 8 ? wanted : 65535 * 8);
  apply_masks_kernel<T><<<blocks, threads, 0, stream>>>(
      static_cast<T*>(x), mask, static_cast<const T*>(fill), v, total);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("apply_masks_ CUDA launch failed: ") +
                             cudaGetErrorString(err));
  }
}

}  // namespace

void launch_apply_masks_cuda(void* x, const bool* mask, const void* fill, DType dtype,
                             const MaskView& view, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::Float32: launch_typed<float>(x, mask, fill, view, s); break;
    case DType::Float64: launch_typed<double>(x, mask, fill, view, s); break;
    case DType::Float16: launch_typed<__half>(x, mask, fill, view, s); break;
    case DType::BFloat16: launch_typed<__nv_bfloat16>(x, mask, fill, view, s); break;
  }
}

}  // namespace coar

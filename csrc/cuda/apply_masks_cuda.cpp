// Registers the CUDA kernel of coar::apply_masks_ for the CUDA dispatch key.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include <torch/types.h>

#include "../apply_masks_check.h"
#include "apply_masks_launch.h"

namespace coar {
namespace {

DType dtype_code(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK(false, "apply_masks_: unsupported dtype ", st);
  }
}

void apply_masks_cuda(at::Tensor& x, const at::Tensor& mask, const at::Tensor& fill,
                      int64_t dim) {
  const MaskView v = check_apply_masks_inputs(x, mask, fill, dim);
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor m = mask.contiguous();
  const at::Tensor f = fill.contiguous();
  launch_apply_masks_cuda(x.data_ptr(), m.data_ptr<bool>(), f.data_ptr(),
                          dtype_code(x.scalar_type()), v,
                          c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
}

}  // namespace

TORCH_LIBRARY_IMPL(coar, CUDA, m) { m.impl("apply_masks_", &apply_masks_cuda); }

}  // namespace coar

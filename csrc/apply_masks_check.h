// Input validation shared by the CPU and CUDA registrations of coar::apply_masks_.
#pragma once

#include <torch/types.h>

#include "apply_masks.h"

namespace coar {

// Checks shapes, dtypes and devices (raising an error that names the problem) and returns
// the (B, P, C, Q) view of x the kernels iterate over.
MaskView check_apply_masks_inputs(const at::Tensor& x, const at::Tensor& mask,
                                  const at::Tensor& fill, int64_t dim);

}  // namespace coar

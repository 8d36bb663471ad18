// The CUDA launcher's interface: raw pointers only, so apply_masks.cu compiles with nvcc alone
// (no torch headers) and the torch binding stays in plain C++.
#pragma once

#include "../apply_masks.h"

namespace coar {

// Launches the batched-mask kernel on `stream` (a cudaStream_t). Throws std::runtime_error
// with CUDA's message if the launch fails.
void launch_apply_masks_cuda(void* x, const bool* mask, const void* fill, DType dtype,
                             const MaskView& view, void* stream);

}  // namespace coar

// Shared declarations of the batched-mask op: the validated 4-D view every kernel works on.
#pragma once

#include <cstdint>

namespace coar {

// A tensor seen as (B, P, C, Q): batch B, units C along the chosen dim, everything before the
// unit dim (after the batch) merged into P and everything after it into Q. Strides in elements.
struct MaskView {
  int64_t B, P, C, Q;
  int64_t sB, sP, sC, sQ;
  int64_t rows_per_mask;  // n: batch rows j*n .. j*n+n-1 use mask row j
};

// Element type codes shared with the CUDA launcher, which sees no torch headers.
enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

}  // namespace coar

// The `coar::apply_masks_` custom op: schema, input validation and the CPU kernel.
//
// In place on a component module's output x whose batch holds k masks x n examples: wherever
// mask[b / n, c] is true, every value of unit c in batch row b becomes fill[c]. One call
// evaluates k ablated models in one forward pass.
#include <Python.h>

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include "apply_masks.h"
#include "apply_masks_check.h"

extern "C" {
// The module exists only so `import coar._C` loads the library and runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace coar {

MaskView check_apply_masks_inputs(const at::Tensor& x, const at::Tensor& mask,
                                  const at::Tensor& fill, int64_t dim) {
  TORCH_CHECK(x.dim() >= 2, "apply_masks_: x must have a batch dim and a unit dim, got shape ",
              x.sizes());
  const int64_t nd = x.dim();
  const int64_t d = dim < 0 ? dim + nd : dim;
  TORCH_CHECK(d >= 1 && d < nd, "apply_masks_: dim=", dim, " must name a unit dim of x (1..",
              nd - 1, " or negative); dim 0 is the batch");
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "apply_masks_: x must be float32, float64, float16 or bfloat16, got ", st);
  TORCH_CHECK(mask.dim() == 2 && mask.scalar_type() == at::kBool,
              "apply_masks_: mask must be a (k, units) bool tensor, got ", mask.scalar_type(),
              " of shape ", mask.sizes());
  TORCH_CHECK(fill.dim() == 1, "apply_masks_: fill must be 1-D (one value per unit), got shape ",
              fill.sizes());
  TORCH_CHECK(mask.device() == x.device() && fill.device() == x.device(),
              "apply_masks_: x, mask and fill must be on one device, got x on ", x.device(),
              ", mask on ", mask.device(), ", fill on ", fill.device());
  TORCH_CHECK(fill.scalar_type() == st, "apply_masks_: fill dtype ", fill.scalar_type(),
              " differs from x dtype ", st);
  const int64_t C = x.size(d);
  TORCH_CHECK(mask.size(1) == C, "apply_masks_: mask has ", mask.size(1),
              " columns but x has ", C, " units along dim ", d);
  TORCH_CHECK(fill.size(0) == C, "apply_masks_: fill has ", fill.size(0), " values but x has ",
              C, " units along dim ", d);
  const int64_t k = mask.size(0);
  const int64_t B = x.size(0);
  TORCH_CHECK(k >= 1, "apply_masks_: mask has no rows (k = 0)");
  TORCH_CHECK(B % k == 0, "apply_masks_: batch of ", B, " rows is not divisible by k=", k,
              " masks (the batch must hold k masks x n examples)");

  int64_t P = 1, Q = 1;
  for (int64_t i = 1; i < d; ++i) P *= x.size(i);
  for (int64_t i = d + 1; i < nd; ++i) Q *= x.size(i);
  at::Tensor v;
  try {
    v = x.view({B, P, C, Q});
  } catch (const c10::Error&) {
    TORCH_CHECK(false, "apply_masks_: x of shape ", x.sizes(), " and strides ", x.strides(),
                " cannot be viewed as (batch, before, units, after) in place; pass a contiguous "
                "(or channels-last) tensor");
  }
  return MaskView{B, P, C, Q, v.stride(0), v.stride(1), v.stride(2), v.stride(3), B / k};
}

namespace {

template <typename T>
void apply_masks_cpu_typed(T* x, const bool* mask, const T* fill, const MaskView& v) {
  const int64_t per_row = v.P * v.C * v.Q;
  // Enough rows per task that threads do not fight over tiny outputs such as (B, 10) logits.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(per_row, 1));
  at::parallel_for(0, v.B, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const bool* row = mask + (b / v.rows_per_mask) * v.C;
      T* xb = x + b * v.sB;
      for (int64_t c = 0; c < v.C; ++c) {
        if (!row[c]) continue;
        const T f = fill[c];
        for (int64_t p = 0; p < v.P; ++p) {
          T* xc = xb + p * v.sP + c * v.sC;
          if (v.sQ == 1) {
            std::fill(xc, xc + v.Q, f);
          } else {
            for (int64_t q = 0; q < v.Q; ++q) xc[q * v.sQ] = f;
          }
        }
      }
    }
  });
}

void apply_masks_cpu(at::Tensor& x, const at::Tensor& mask, const at::Tensor& fill, int64_t dim) {
  const MaskView v = check_apply_masks_inputs(x, mask, fill, dim);
  if (x.numel() == 0) return;
  const at::Tensor m = mask.contiguous();
  const at::Tensor f = fill.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "apply_masks_cpu", [&] {
    apply_masks_cpu_typed<scalar_t>(x.data_ptr<scalar_t>(), m.data_ptr<bool>(),
                                    f.data_ptr<scalar_t>(), v);
  });
}

}  // namespace

TORCH_LIBRARY(coar, m) {
  m.def("apply_masks_(Tensor(a!) x, Tensor mask, Tensor fill, int dim) -> ()");
}

TORCH_LIBRARY_IMPL(coar, CPU, m) { m.impl("apply_masks_", &apply_masks_cpu); }

}  // namespace coar

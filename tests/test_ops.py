"""The compiled batched-mask op matches its pure-PyTorch reference and refuses bad input."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coar import ops

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
CSRC = Path(__file__).resolve().parents[1] / "csrc"


def compiled(x, mask, fill, dim):
    torch.ops.coar.apply_masks_(x, mask, fill, dim)


@st.composite
def op_inputs(draw):
    rank = draw(st.integers(2, 5))
    dim = draw(st.integers(1, rank - 1))
    if draw(st.booleans()):
        dim -= rank  # negative dims name the same axis
    k = draw(st.integers(1, 4))
    n = draw(st.integers(1, 3))
    shape = [k * n] + [draw(st.integers(1, 5)) for _ in range(rank - 1)]
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    units = shape[dim]
    mask = torch.rand(k, units, generator=g) < draw(st.sampled_from([0.0, 0.3, 1.0]))
    fill = torch.randn(units, generator=g).to(dtype)
    channels_last = rank == 4 and dim % rank == 1 and draw(st.booleans())  # NHWC conv outputs
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, mask, fill, dim


def test_extension_is_loaded_and_compiled_on_cpu():
    assert ops.extension_error() is None
    assert ops.backend("cpu") == "compiled"


@settings(max_examples=300, deadline=None)
@given(op_inputs())
def test_compiled_cpu_op_equals_reference_on_random_shapes_layouts_dtypes_and_k(args):
    x, mask, fill, dim = args
    expected = x.clone()
    ops.reference_apply_masks_(expected, mask, fill, dim)
    got = x.clone(memory_format=torch.preserve_format)
    compiled(got, mask, fill, dim)
    assert torch.equal(got, expected)


def test_reference_sets_exactly_the_masked_units_of_each_mask_block():
    k, n, c = 3, 2, 4
    x = torch.zeros(k * n, c, 5)
    mask = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    fill = torch.tensor([1.0, 2.0, 3.0, 4.0])
    ops.reference_apply_masks_(x, mask, fill, 1)
    for b in range(k * n):
        for u in range(c):
            want = fill[u] if mask[b // n, u] else 0.0
            assert torch.all(x[b, u] == want)


def test_op_is_in_place_and_returns_the_same_tensor():
    x = torch.randn(4, 3)
    out = ops.apply_masks_(x, torch.ones(2, 3, dtype=torch.bool), torch.zeros(3), -1)
    assert out is x and torch.all(x == 0)


BAD = {
    "mask has 3 columns but x has 4 units": lambda: (torch.randn(4, 4), torch.zeros(2, 3, dtype=torch.bool), torch.zeros(4), 1),
    "not divisible by k=3": lambda: (torch.randn(4, 4), torch.zeros(3, 4, dtype=torch.bool), torch.zeros(4), 1),
    "fill has 5 values but x has 4 units": lambda: (torch.randn(4, 4), torch.zeros(2, 4, dtype=torch.bool), torch.zeros(5), 1),
    "fill dtype": lambda: (torch.randn(4, 4), torch.zeros(2, 4, dtype=torch.bool), torch.zeros(4, dtype=torch.float64), 1),
    "mask must be a (k, units) bool": lambda: (torch.randn(4, 4), torch.zeros(2, 4), torch.zeros(4), 1),
    "must be float32, float64, float16 or bfloat16": lambda: (torch.zeros(4, 4, dtype=torch.int32), torch.zeros(2, 4, dtype=torch.bool), torch.zeros(4, dtype=torch.int32), 1),
    "dim=0 must name a unit dim": lambda: (torch.randn(4, 4), torch.zeros(2, 4, dtype=torch.bool), torch.zeros(4), 0),
    "must have a batch dim and a unit dim": lambda: (torch.randn(4), torch.zeros(2, 4, dtype=torch.bool), torch.zeros(4), 1),
    "cannot be viewed": lambda: (torch.randn(4, 5, 3, 2).transpose(2, 3), torch.zeros(2, 5, dtype=torch.bool), torch.zeros(5), 1),
    "mask has no rows": lambda: (torch.randn(4, 4), torch.zeros(0, 4, dtype=torch.bool), torch.zeros(4), 1),
}


@pytest.mark.parametrize("impl", [compiled, ops.reference_apply_masks_], ids=["compiled", "reference"])
@pytest.mark.parametrize("message", list(BAD))
def test_bad_inputs_raise_an_error_naming_the_problem(impl, message):
    with pytest.raises(RuntimeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        impl(*BAD[message]())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_op_equals_reference(dtype):
    g = torch.Generator().manual_seed(0)
    for shape, dim in [((12, 7, 5, 5), 1), ((12, 9, 33), -1), ((12, 3, 4, 6), 2)]:
        x = torch.randn(shape, generator=g).to(dtype)
        mask = torch.rand(4, shape[dim], generator=g) < 0.3
        fill = torch.randn(shape[dim], generator=g).to(dtype)
        expected = x.clone()
        ops.reference_apply_masks_(expected, mask, fill, dim)
        got = x.cuda()
        compiled(got, mask.cuda(), fill.cuda(), dim)
        assert torch.equal(got.cpu(), expected)


def test_mismatched_devices_are_refused():
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU to place tensors on two devices")
    with pytest.raises(RuntimeError, match="must be on one device"):
        compiled(torch.randn(4, 4).cuda(), torch.zeros(2, 4, dtype=torch.bool), torch.zeros(4).cuda(), 1)


def test_opcheck_validates_schema_mutation_and_fake_kernel():
    x = torch.randn(6, 4, 3, 3)
    mask = torch.rand(3, 4) < 0.5
    torch.library.opcheck(torch.ops.coar.apply_masks_.default, (x, mask, torch.randn(4), 1))


def test_op_traces_under_torch_compile_fullgraph():
    def f(x, mask, fill):
        y = x * 2
        torch.ops.coar.apply_masks_(y, mask, fill, 1)
        return y + 1

    x, mask, fill = torch.randn(4, 3, 2), torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.bool), torch.randn(3)
    got = torch.compile(f, backend="aot_eager", fullgraph=True)(x, mask, fill)
    assert torch.equal(got, f(x, mask, fill))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_source_compiles_with_nvcc_for_sm90(tmp_path):
    result = subprocess.run(
        ["nvcc", "-c", str(CSRC / "cuda" / "apply_masks.cu"), "-arch=sm_90", "-std=c++17", "-o", str(tmp_path / "k.o")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr

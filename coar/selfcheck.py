"""`coar selfcheck`: is every fast path on this device exact, and how fast is it?

(a) the mask op (compiled kernel of the device) against the pure-PyTorch reference, for every
    dtype and layout; (b) run_masked on the device against run_masked on the CPU for resnet18
    and a small transformer (on a CPU: the fast path, coar.fastpath, against the plain eager
    model); (c) the cupy solver against numpy; (d) a throughput table against the plain forward
    and the published method. Prints one line per check; returns False on any mismatch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from coar import ops
from coar.ablation import unit_fills
from coar.components import ComponentSet, discover
from coar.fastpath import FastPath, prepare
from coar.forward import run_masked
from coar.masks import sample_masks
from coar.outputs import lm_margin, margin
from coar.throughput import make_workload, paired_ratio, plain, print_table, published, rate, time_interleaved

FP32_TOL = 1e-5  # largest |difference| / largest |output|, float32 paths
LOW_TOL = 5e-2  # the same for bf16 against float32 (bf16 keeps ~3 significant digits)
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class Report:
    """Collects check results and prints each as it comes."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def check(self, name: str, ok: bool, detail: str) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
        if not ok:
            self.failed.append(name)

    @staticmethod
    def skip(name: str, reason: str) -> None:
        print(f"skip {name}: {reason}", flush=True)


def _op_cases(device: torch.device) -> list[tuple[str, torch.Tensor, int]]:
    """(layout, x, unit dim): conv NCHW and NHWC outputs, linear (B, C), sequence (B, T, C)."""
    g = torch.Generator().manual_seed(0)
    nchw = torch.randn(6, 5, 4, 3, generator=g)
    return [
        ("NCHW dim 1", nchw, 1),
        ("NHWC dim 1", nchw.contiguous(memory_format=torch.channels_last), 1),
        ("(B, C) dim 1", torch.randn(6, 7, generator=g), 1),
        ("(B, T, C) dim -1", torch.randn(6, 3, 7, generator=g), -1),
        ("(B, T, C) dim 1", torch.randn(6, 3, 7, generator=g), 1),
    ]


def check_op(report: Report, device: torch.device) -> None:
    """(a) `ops.apply_masks_` on `device` equals `reference_apply_masks_` on the CPU, bit for bit."""
    backend = ops.backend(device)
    report.check(f"op backend on {device.type}", backend == "compiled",
                 f"{backend}" + ("" if backend == "compiled" else f" ({ops.extension_error()})"))
    g = torch.Generator().manual_seed(1)
    bad = []
    cases = 0
    for layout, x0, dim in _op_cases(device):
        units = x0.shape[dim]
        for dtype in DTYPES:
            for k in (1, 3):
                mask = torch.rand(k, units, generator=g) < 0.4
                mask[0, 0] = True  # at least one ablated unit
                fill = torch.randn(units, generator=g).to(dtype)
                x = x0.to(dtype)
                expected = x.clone(memory_format=torch.preserve_format)
                ops.reference_apply_masks_(expected, mask, fill, dim)
                got = x.to(device).clone(memory_format=torch.preserve_format)
                ops.apply_masks_(got, mask.to(device), fill.to(device), dim)
                cases += 1
                if not torch.equal(got.cpu(), expected):
                    bad.append(f"{layout} {dtype} k={k}")
    report.check(f"op vs reference on {device.type}", not bad,
                 f"{cases} cases (4 dtypes x 5 layouts x k in 1, 3) equal" if not bad else f"differs for {bad[:4]}")


def _small_transformer(seed: int) -> tuple[torch.nn.Module, ComponentSet, torch.Tensor, torch.Tensor]:
    """The tinylm architecture (GPT-2, 2 layers) with random weights; heads and MLP neurons."""
    from coar.tasks.tinylm import CausalLM, build_model

    torch.manual_seed(seed)
    model = CausalLM(build_model(vocab_size=40, seq_len=16, layers=2, heads=4, width=32, neurons=64)).eval()
    components = discover(model, ("head", "linear"), ["*.attn", "*mlp.c_proj"], [])
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 40, (6, 16), generator=g)
    return model, components, ids, ids.clone()


def _relative(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))


def check_run_masked(report: Report, device: torch.device, quick: bool) -> None:
    """(b) ablated outputs at alpha 0.05: device vs CPU (GPU), or fast path vs eager (CPU)."""
    w = make_workload("resnet18", 4 if quick else 32, 0, "cpu")
    cases: list[tuple[str, torch.nn.Module, ComponentSet, torch.Tensor, torch.Tensor, Callable]] = [
        ("resnet18 32x32", w.model, w.components, w.inputs, w.labels, margin),
        ("GPT-2 2 layers", *_small_transformer(0), lm_margin),
    ]
    for name, model, components, x, y, fn in cases:
        masks = sample_masks(0, 0, 8, len(components), 0.05)
        fills = unit_fills(model, components)
        expected = run_masked(model, components, masks, x, y, fn, fills=fills)
        fast = FastPath(compile=not quick and device.type == "cpu")
        target = copy_to(model, device)
        prepared = prepare(target, components, [f.to(device) for f in fills], fast)
        for precision, tol in (("fp32", FP32_TOL), ("bf16", LOW_TOL)):
            if device.type == "cuda":
                plain_out = run_masked(target, components, masks, x, y, fn, fills=fills, precision=precision)
                err = _relative(plain_out, expected)
                report.check(f"run_masked {name} {precision} cuda vs cpu fp32", err <= tol, f"{err:.2g} relative (tolerance {tol:g})")
            got = run_masked(prepared.model, components, masks, x, y, fn, fills=prepared.fills, precision=precision)
            err = _relative(got, expected)
            what = "fast path (" + ", ".join(k for k, v in vars(fast).items() if v) + f") on {device.type}"
            report.check(f"run_masked {name} {precision} {what} vs eager cpu fp32", err <= tol,
                         f"{err:.2g} relative (tolerance {tol:g}); {len(prepared.folded)} BatchNorms folded")


def copy_to(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` itself on the CPU, a copy on another device."""
    import copy

    return model if device.type == "cpu" else copy.deepcopy(model).to(device)


def check_cupy(report: Report) -> None:
    """(c) OLS with the cupy backend equals numpy's to float32 rounding."""
    from coar import solver
    from coar.solver.backend import get_backend

    try:
        get_backend("cupy")
    except RuntimeError as exc:
        report.skip("cupy solver vs numpy", str(exc))
        return
    rng = np.random.default_rng(0)
    masks = rng.random((600, 40)) < 0.1
    outputs = (masks @ rng.standard_normal((40, 30)) + 0.01 * rng.standard_normal((600, 30))).astype(np.float32)
    a = solver.fit((masks, outputs), method="ols", backend="numpy")
    b = solver.fit((masks, outputs), method="ols", backend="cupy")
    err = float(np.abs(np.asarray(a.weight) - np.asarray(b.weight)).max())
    report.check("cupy solver vs numpy (OLS)", err <= 1e-4, f"largest weight difference {err:.2g}")


def throughput(device: torch.device, quick: bool) -> None:
    """(d) (examples x masks)/s: plain forward, coar batched (fp32, bf16), published (AMP on CUDA)."""
    cuda = device.type == "cuda"
    sizes = {"digits": 64, "resnet18": 8} if quick else {"digits": 1000 if cuda else 400, "resnet18": 1000 if cuda else 400,
                                                           "resnet50": 256 if cuda else 16}
    k, n_masks, reps = (4, 4, 2) if quick else ((8, 16, 5) if cuda else (4, 8, 3))
    header = ["model", "n", "plain fp32", "plain bf16", "coar fp32", "coar bf16", "published", "coar32/plain32",
              "coar16/plain16", "coar16/published"]
    lines = []
    for name, n in sizes.items():
        w = make_workload(name, n, 0, device)
        masks = torch.from_numpy(sample_masks(0, 0, n_masks, len(w.components), 0.05))
        fast = prepare(w.model, w.components, unit_fills(w.model, w.components), FastPath())

        def coar(precision: str) -> Callable[[], np.ndarray]:
            return lambda: run_masked(fast.model, w.components, masks, w.inputs, w.labels, margin, masks_per_pass=k,
                                      max_batch=k * n, fills=fast.fills, precision=precision)

        runs = {
            "plain fp32": plain(fast.model, w, k, n_masks // k, "fp32"),
            "plain bf16": plain(fast.model, w, k, n_masks // k, "bf16"),
            "coar fp32": coar("fp32"),
            "coar bf16": coar("bf16"),
            "published": lambda: published(w, masks, amp=cuda),
        }
        s = time_interleaved(runs, reps, warmup=1)
        tput = {m: n_masks * n / float(np.median(v)) for m, v in s.items()}
        lines.append([name, str(n), *(rate(tput[m]) for m in runs),
                      f"{paired_ratio(s['coar fp32'], s['plain fp32']):.2f}",
                      f"{paired_ratio(s['coar bf16'], s['plain bf16']):.2f}",
                      f"{paired_ratio(s['coar bf16'], s['published']):.2f}"])
    print()
    print_table(header, lines)
    print(f"(examples x masks)/s on {device}, medians of {reps} interleaved repetitions, {n_masks} masks at alpha 0.05, "
          f"coar: {k} masks per pass with the fast path (BatchNorm folding, channels_last); published: deep copy + "
          f"zero weights, one mask per pass{', fp16 autocast' if cuda else ', fp32'}; ratios: medians of paired ratios")


def selfcheck(device: str = "auto", quick: bool = False) -> bool:
    """Run (a)-(d) on `device` ("auto": cuda when visible); True when every check passed."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda was requested but torch sees no GPU")
    if dev.type == "cuda":  # float32 checks must not run in TF32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    start = time.perf_counter()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"coar selfcheck on {dev} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads"
          f"{', quick' if quick else ''}", flush=True)
    report = Report()
    check_op(report, dev)
    check_run_masked(report, dev, quick)
    check_cupy(report)
    if report.failed:
        print(f"\n{len(report.failed)} check(s) failed: {report.failed}; throughput not measured")
        return False
    throughput(dev, quick)
    print(f"\nall checks passed in {time.perf_counter() - start:.0f} s")
    return True

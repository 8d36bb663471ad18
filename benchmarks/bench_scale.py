"""Scale rehearsal: merge -> fit -> evaluate at the ImageNet ResNet-50 component count.

Not a test: writes synthetic shards (random masks at alpha 0.05, outputs from a planted linear
model plus noise) with coar's own writer, then runs coar's merge, fit and evaluate steps under
a memory budget, each step in its own subprocess, and prints per step the wall time, the
peak resident memory (ru_maxrss of that child, from os.wait4) and the disk used, and the fit's
time against the float64 floor of its products X'X and X'Y measured on this machine in the
same run.

    python benchmarks/bench_scale.py            # N=22,720, m=30,000, n=5,000, budget 12 GB
    python benchmarks/bench_scale.py --small    # N=2,000, m=3,000, n=500, budget 0.4 GB
    python benchmarks/bench_scale.py --components 8000 --masks 10000 --examples 2000 --budget-gb 2
    SLURM_MEM_PER_NODE=2048 python benchmarks/bench_scale.py --components 8000 --masks 10000 \
        --examples 2000 --budget-gb auto   # the fit's auto budget under a 2 GB allocation

Goals printed beside the measurements: fit peak RSS <= 1.25 x (Gram + factor + one block of
examples), fit time <= 2 x the floor. The planted weights are dense and low-rank (rank 8), so
generating outputs costs little next to the fit; the fit must recover them (correlation shown).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ALPHA = 0.05
RANK = 8  # of the planted weight matrix
NOISE = 0.1
HELDOUT = 500  # held-out masks for evaluate
FINGERPRINTS = {"model_fingerprint": "synthetic-model", "examples_fingerprint": "synthetic-examples"}


def components(run: dict):  # -> coar.components.ComponentSet: N synthetic rows, the run's component list
    from coar.components import ComponentGroup, ComponentSet

    return ComponentSet([ComponentGroup("synthetic", "row", run["N"], 0)])


def fingerprints(run: dict) -> dict:
    """What ties the synthetic files to the synthetic run (its component list's real fingerprint)."""
    return {**FINGERPRINTS, "components_fingerprint": components(run).fingerprint}


def example_ids(run: dict) -> list[str]:
    return [f"example/{i}" for i in range(run["n"])]


# ----------------------------------------------------------------------------- steps (subprocesses)


def planted(N: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense low-rank weights W = A B (N x n) and a bias per example."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((N, RANK)) / np.sqrt(RANK)
    B = rng.standard_normal((RANK, n))
    return A, B


def rows(seed: int, count: int, A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`count` masks and their outputs y = x A B + 1 + noise (float32)."""
    rng = np.random.default_rng(seed)
    X = rng.random((count, A.shape[0]), dtype=np.float32) < ALPHA
    Y = (X @ A) @ B + 1.0 + NOISE * rng.standard_normal((count, B.shape[1]))
    return X, Y.astype(np.float32)


def meta(run: dict, **extra: object) -> dict:
    from coar import __version__, h5format

    return {"seed": 0, "alpha": ALPHA, "n_components": run["N"], "n_examples": run["n"], **fingerprints(run),
            "output_fn": "synthetic", "ablation": "weight", "precision": "fp32", "coar_version": __version__,
            "encoding": h5format.ENCODING, **extra}


def step_write(run: dict) -> dict:
    """prepare.json, the training shards and one held-out file, with coar's writer."""
    from coar import h5format
    from coar.masks import shard_ranges

    folder = Path(run["dir"])
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    (folder / "heldout").mkdir(exist_ok=True)
    (folder / "prepare.json").write_text(json.dumps({"n_components": run["N"], "n_examples": run["n"],
                                                     "output_fn": "synthetic", **fingerprints(run)}))
    components(run).save(folder / "components.json")
    (folder / "example_ids.json").write_text(json.dumps(example_ids(run)))
    A, B = planted(run["N"], run["n"])
    for shard, (start, stop) in enumerate(shard_ranges(run["m"], run["shards"])):
        X, Y = rows(1 + shard, stop - start, A, B)
        h5format.write_shard(folder / "shards" / f"shard-{shard}.h5", X, Y,
                             meta(run, shard=shard, row_start=start, row_stop=stop))
    X, Y = rows(10**6, HELDOUT, A, B)
    h5format.write_shard(folder / "heldout" / "alpha.h5", X, Y, meta(run, shard=0, row_start=0, row_stop=HELDOUT))
    return {}


def step_merge(run: dict) -> dict:
    from coar import steps

    folder = Path(run["dir"])
    shards = sorted((folder / "shards").glob("shard-*.h5"))
    steps.merge(folder, shards, folder / "dataset.h5", run["m"])
    return {}


def step_fit(run: dict) -> dict:
    from coar import steps
    from coar.run import PROVENANCE, Run

    folder = Path(run["dir"])
    expect = Run(folder).expect
    made = {k: v for k, v in meta(run).items() if k in PROVENANCE}
    result = steps.fit_dataset(folder / "dataset.h5", folder / "attributions.h5", expect, components(run).table(),
                               example_ids(run),
                               method="ols", backend="numpy", chunk_rows=4096, memory_budget=run["budget_gb"],
                               provenance=made)
    return {**result, "fit_seconds": result.pop("seconds")}


def step_imports(run: dict) -> dict:
    """Nothing but the imports every step makes: the resident memory no step can go below."""
    from coar import steps  # noqa: F401

    return {}


def step_evaluate(run: dict) -> dict:
    from coar import h5format, steps

    folder = Path(run["dir"])
    result = steps.evaluate(folder, folder / "attributions.h5", {ALPHA: folder / "heldout" / "alpha.h5"}, ALPHA,
                            folder / "evaluation.json")
    A, B = planted(run["N"], run["n"])
    weight = h5format.read_attributions(folder / "attributions.h5").weight
    sample = slice(0, min(run["n"], 200))
    truth = (A @ B[:, sample]).T
    recovered = float(np.corrcoef(weight[sample].ravel(), truth.ravel())[0, 1])
    return {"mean_correlation": result["mean_correlation"], "planted_weight_correlation": recovered}


def step_floor(run: dict) -> dict:
    """Seconds of the float64 GEMMs X'X and X'Y over m rows: one block of rows timed, scaled to m.

    X'X is timed as a general product of two distinct arrays (numpy would take X.T @ X as a
    symmetric rank-k update, which the OpenBLAS 0.3.31 of numpy's wheels ran slowly at N = 22,720
    on this machine, and with 1,024 rows crashed)."""
    N, n, m = run["N"], run["n"], run["m"]
    k = min(m, 256)
    rng = np.random.default_rng(0)
    X = (rng.random((k, N), dtype=np.float32) < ALPHA).astype(np.float64)
    X2, Y = X.copy(), rng.standard_normal((k, n))
    X.T @ Y  # warm up the BLAS threads
    start = time.perf_counter()
    gram = X.T @ X2
    middle = time.perf_counter()
    cross = X.T @ Y
    end = time.perf_counter()
    del gram, cross
    return {"xtx_seconds": (middle - start) * m / k, "xty_seconds": (end - middle) * m / k}


STEPS = {"imports": step_imports, "write": step_write, "merge": step_merge, "fit": step_fit, "evaluate": step_evaluate, "floor": step_floor}


# ----------------------------------------------------------------------------- driver


def run_step(name: str, run: dict) -> dict:
    """Run one step in a child process; its wall time, peak RSS (bytes) and result."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--step", name, json.dumps(run)],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = []
    done = threading.Event()

    def report_memory() -> None:  # every minute, so that a run stopped early still tells its peak
        while not done.wait(60):
            print(f"    [{time.perf_counter() - start:.0f} s, peak RSS so far {_peak_so_far(child.pid):.2f} GB]", flush=True)

    threading.Thread(target=report_memory, daemon=True).start()
    for line in child.stdout:  # progress as it comes, with the child's peak RSS so far
        lines.append(line.rstrip("\n"))
        print(f"    [{time.perf_counter() - start:.0f} s, peak RSS so far {_peak_so_far(child.pid):.2f} GB] {lines[-1]}",
              flush=True)
    _, status, usage = os.wait4(child.pid, 0)
    done.set()
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"step {name} failed (wait status {status})")
    return {**json.loads(lines[-1]), "seconds": seconds, "peak_rss": usage.ru_maxrss * 1024}


def _peak_so_far(pid: int) -> float:
    """VmHWM of a running process in GB (0 where /proc is unavailable)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) * 1024 / 1e9 for line in status.splitlines() if line.startswith("VmHWM")), 0.0)


def disk(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--components", type=int, default=22_720)
    p.add_argument("--masks", type=int, default=30_000)
    p.add_argument("--examples", type=int, default=5_000)
    p.add_argument("--shards", type=int, default=10)
    p.add_argument("--budget-gb", type=lambda t: None if t == "auto" else float(t), default=12.0,
                   help="GB for the fit's arrays, or auto (the job's limit less the fit's resident memory)")
    p.add_argument("--small", action="store_true", help="N=2,000, m=3,000, n=500, budget 0.4 GB (2 blocks)")
    p.add_argument("--dir", default=None, help="work folder (default: a temporary one, deleted)")
    p.add_argument("--step", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.step:
        name, run = args.step
        print(json.dumps(STEPS[name](json.loads(run))), flush=True)
        return
    if args.small:
        args.components, args.masks, args.examples, args.shards, args.budget_gb = 2_000, 3_000, 500, 4, 0.4
    folder = Path(args.dir or tempfile.mkdtemp(prefix="coar-bench-scale-"))
    run = {"dir": str(folder), "N": args.components, "m": args.masks, "n": args.examples,
           "shards": args.shards, "budget_gb": args.budget_gb}
    N, n, m = run["N"], run["n"], run["m"]
    print(f"N={N:,} components, m={m:,} masks, n={n:,} examples, {args.shards} shards, "
          f"fit budget {'auto' if args.budget_gb is None else f'{args.budget_gb:g} GB'}, in {folder}")
    try:
        results = {}
        for name in ("imports", "floor", "write", "merge", "fit", "evaluate"):
            print(f"  {name} ...", flush=True)
            results[name] = run_step(name, run)
        report(run, results, folder)
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


def report(run: dict, results: dict, folder: Path) -> None:
    from coar.solver.estimators import closed_form_bytes
    from coar.solver.memory import job_memory

    N, n = run["N"], run["n"]
    fit = results["fit"]
    sizes = {"write": disk(folder / "shards") + disk(folder / "heldout"), "merge": disk(folder / "dataset.h5"),
             "fit": disk(folder / "attributions.h5"), "evaluate": disk(folder / "evaluation.json"), "floor": 0,
             "imports": 0}
    print()
    print("| step | wall s | peak RSS GB | disk written GB |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['seconds']:.1f} | {r['peak_rss'] / 1e9:.2f} | {sizes[name] / 1e9:.3f} |")
    square = 8 * N * N
    block = fit["example_block"]
    goal_bytes = 2 * square + (closed_form_bytes(N, block, "ols") - closed_form_bytes(N, 0, "ols"))
    floor = results["floor"]["xtx_seconds"] + results["floor"]["xty_seconds"]
    print()
    print(f"fit plan: {fit['solver_path']}, {fit['n_blocks']} block(s) of {block} examples, budget {fit['memory_budget']}")
    base = results["imports"]["peak_rss"]
    limit = job_memory()
    print(f"fit peak RSS {fit['peak_rss'] / 1e9:.2f} GB beside the job's memory limit {limit}: "
          f"{'within' if fit['peak_rss'] <= limit.bytes else 'OVER'} it")
    print(f"fit peak RSS {fit['peak_rss'] / 1e9:.2f} GB = {fit['peak_rss'] / goal_bytes:.2f} x (Gram {square / 1e9:.2f} GB "
          f"+ factor {square / 1e9:.2f} GB + one block {(goal_bytes - 2 * square) / 1e9:.2f} GB) (goal <= 1.25); "
          f"above the {base / 1e9:.2f} GB of the imports alone: {(fit['peak_rss'] - base) / goal_bytes:.2f} x")
    print(f"fit {fit['fit_seconds']:.1f} s (step {fit['seconds']:.1f} s with start-up) = {fit['fit_seconds'] / floor:.2f} x "
          f"the float64 floor {floor:.1f} s (X'X {results['floor']['xtx_seconds']:.1f} s + "
          f"X'Y {results['floor']['xty_seconds']:.1f} s) (goal <= 2)")
    print(f"disk: shards {disk(folder / 'shards') / 1e9:.3f} GB, dataset.h5 {sizes['merge'] / 1e6:.3f} MB (no copy)")
    print(f"evaluate: mean held-out correlation {results['evaluate']['mean_correlation']:.4f}, "
          f"planted-weight correlation {results['evaluate']['planted_weight_correlation']:.4f}")


if __name__ == "__main__":
    main()

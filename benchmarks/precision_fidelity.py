"""Fidelity of low precision and of the fast path: mean held-out correlation against fp32 eager.

With the project's own steps (coar.steps): prepare the task once, then for each variant
(eager fp32, fast path fp32, fast path bf16, ...) collect the same training and held-out masks,
fit OLS and score on the held-out masks. Prints each variant's mean held-out correlation, its
difference from eager fp32 (goal: within 0.01), the largest per-example output difference from
eager fp32 on the same masks, and the collection time.

    python benchmarks/precision_fidelity.py                      # digits, 2,000 training masks
    python benchmarks/precision_fidelity.py --preset tinylm --masks 1200
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import yaml

from coar import steps
from coar.constants import DEFAULT_MASKS_PER_PASS, DEFAULT_MAX_BATCH
from coar.fastpath import FastPath
from coar.run import Run

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"digits": ROOT / "config" / "config.yaml", "tinylm": ROOT / "config" / "presets" / "tinylm.yaml"}
VARIANTS = {
    "eager fp32": ("fp32", FastPath.none()),
    "fast fp32": ("fp32", FastPath()),
    "eager bf16": ("bf16", FastPath.none()),
    "fast bf16": ("bf16", FastPath()),
}
GOAL = 0.01


def outputs_of(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["outputs"][:]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=list(PRESETS), default="digits")
    p.add_argument("--masks", type=int, default=2000, help="training masks (the default run uses 4,000 on digits)")
    p.add_argument("--heldout", type=int, default=100, help="held-out masks")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default=None, help="keep files here and reuse a task prepared there (default: a temporary folder)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = yaml.safe_load(PRESETS[args.preset].read_text())
    c = config["components"]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.workdir or tmp)
        run.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if args.workdir and (run / "prepare.json").exists():  # a kept folder: reuse its prepared task
            info = Run(run).info
        else:
            info = steps.prepare(config["task"]["spec"], config["task"].get("params", {}), c["kinds"], c["include"],
                                 c["exclude"], run)
        print(f"{args.preset}: {info['n_examples']} examples, {info['n_components']} components, "
              f"prepared in {time.perf_counter() - t0:.0f} s; {args.masks} training and {args.heldout} held-out masks "
              f"at alpha {config['alpha']}, {torch.get_num_threads()} thread(s)", flush=True)
        common = dict(task_spec=config["task"]["spec"], task_params=config["task"].get("params", {}), alpha=config["alpha"], seed=config["seed"], ablation=config["ablation"], output_fn=None,
                      masks_per_pass=config.get("masks_per_pass", DEFAULT_MASKS_PER_PASS),
                      max_batch=config.get("max_batch", DEFAULT_MAX_BATCH), device="cpu")
        rows = {}
        for name in args.variants:
            precision, fast = VARIANTS[name]
            tag = name.replace(" ", "-")
            train, heldout = run / f"train-{tag}.h5", run / f"heldout-{tag}.h5"
            t0 = time.perf_counter()
            steps.collect(run, train, shard=0, shards=1, masks=args.masks, precision=precision, fast_path=fast, **common)
            seconds = time.perf_counter() - t0
            steps.collect(run, heldout, shard=0, shards=1, masks=args.heldout, purpose="heldout",
                          precision=precision, fast_path=fast, **common)
            attributions = run / f"attributions-{tag}.h5"
            steps.fit(run, train, attributions, method="ols", backend="numpy", chunk_rows=4096)
            ev = steps.evaluate(run, attributions, {config["alpha"]: heldout}, config["alpha"], run / f"evaluation-{tag}.json",
                                training_data=train)
            rows[name] = (ev["mean_correlation"], outputs_of(train), seconds)
            print(f"  {name}: mean held-out correlation {ev['mean_correlation']:.4f}, collection {seconds:.0f} s", flush=True)
    base_corr, base_out, base_s = rows.get("eager fp32", next(iter(rows.values())))
    print()
    print("| variant | mean held-out corr. | difference from eager fp32 | largest output difference | "
          "output std | training collection s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name, (corr, out, seconds) in rows.items():
        diff = corr - base_corr
        mark = "" if abs(diff) <= GOAL else " (beyond 0.01)"
        print(f"| {name} | {corr:.4f} | {diff:+.4f}{mark} | {np.abs(out - base_out).max():.3g} | {base_out.std():.3g} | "
              f"{seconds:.0f} | {base_s / seconds:.2f} |")


if __name__ == "__main__":
    main()

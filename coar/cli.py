"""The `coar` command line: one subcommand per workflow step, so every rule runs by hand too.

    coar prepare  --task coar.tasks.digits:task --run-dir results/digits
    coar collect  --run-dir results/digits --shard 0 --shards 4 --masks 4000 --alpha 0.05 --out shard-0.h5
    coar merge    --run-dir results/digits --masks 4000 --out dataset.h5 shard-*.h5
    coar fit      --run-dir results/digits --data dataset.h5 --out attributions.h5
    coar evaluate --run-dir results/digits --attributions attributions.h5 --alpha 0.05 --heldout 0.05=h.h5
    coar summarize --run-dir results/digits --evaluation evaluation.json --out summary.md --plot plots/correlation_histogram.png
    coar baseline --run-dir results/digits --method loo --out baselines/loo.h5
    coar compare  --run-dir results/digits --alpha 0.05 --method coar=attributions.h5 --method loo=baselines/loo.h5 \
                  --heldout 0.05=h.h5 --out comparison.json --table comparison.md
    coar figures  --run-dir results/digits --comparison comparison.json --method coar=attributions.h5 \
                  --heldout 0.05=h.h5 --correlation-table plots/correlation_table.png \
                  --correlation-distributions plots/correlation_distributions.png \
                  --predicted-vs-true plots/predicted_vs_true.png --layer-attributions plots/layer_attributions.png \
                  --step-timings plots/step_timings.png
    coar selfcheck --device cuda   # the op, run_masked, the cupy solver and a throughput table on one device
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from coar.constants import (ABLATION_MODES, BASELINE_METHODS, COMPONENT_KINDS, DEFAULT_MASKS_PER_PASS, DEFAULT_MAX_BATCH,
                            DEVICES, KIND_PRESETS, PRECISIONS, REPORT_FIGURES, SOLVER_BACKENDS, SOLVER_METHODS, UNREACHABLE_POLICIES)


def _csv(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _kinds(text: str) -> str | list[str]:
    return text if text in KIND_PRESETS else _csv(text)


def _alpha_path(text: str) -> tuple[float, str]:
    alpha, sep, path = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected ALPHA=PATH, got {text!r}")
    return float(alpha), path


def _memory_budget(text: str) -> float | None:
    """'auto' (None: sized from the job's limits) or a positive number of GB."""
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive finite number of GB, got {text!r}")
    return value


def _name_path(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def _provenance_options(s: argparse.ArgumentParser, alpha: bool) -> None:
    """Options naming how the step's input data must have been made; a value not given is not checked."""
    if alpha:
        s.add_argument("--alpha", type=float, default=None, help="alpha the data must have been collected at")
    s.add_argument("--seed", type=int, default=None, help="seed the data must have been collected with")
    s.add_argument("--ablation", choices=ABLATION_MODES, default=None, help="ablation the data must use")
    s.add_argument("--output-fn", default=None, help="output function the data must use; default: the task's own")
    s.add_argument("--precision", choices=PRECISIONS, default=None, help="precision the data must have been collected in")


def _positive(text: str) -> int:
    """A positive whole number."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _max_batch(text: str) -> int | str:
    """'auto' or a positive whole number of rows: the one parser of every command's --max-batch."""
    if text == "auto":
        return text
    try:
        return _positive(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number or 'auto', got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coar", description="Component attribution via regression (COAR): one subcommand per workflow step.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, run_dir: bool = True) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if run_dir:
            s.add_argument("--run-dir", required=True, help="run folder (results/<run>) of the prepare step's files")
        return s

    def add_loader(s: argparse.ArgumentParser) -> None:
        s.add_argument("--loader-workers", type=int, default=0, help="DataLoader worker processes (Dataset tasks)")
        s.add_argument("--loader-pin-memory", action=argparse.BooleanOptionalAction, default=True,
                       help="pinned host memory for copies to a GPU (Dataset tasks; ignored on CPU)")
        s.add_argument("--loader-cache-mb", type=float, default=0,
                       help="keep a Dataset's examples in memory between mask blocks when they fit in this many MiB")

    def add_batching(s: argparse.ArgumentParser) -> None:
        s.add_argument("--masks-per-pass", type=_positive, default=DEFAULT_MASKS_PER_PASS,
                       help="masks evaluated in one batched forward pass (loo baseline: the same)")
        s.add_argument("--max-batch", type=_max_batch, default=DEFAULT_MAX_BATCH,
                       help="most rows (masks x examples, or path points x examples) per forward pass, "
                            "or 'auto' (GPU: probed; CPU: 512)")

    s = add("prepare", "Build the task (train the model if the task does), discover its components, save both.")
    s.add_argument("--task", required=True, help="task function, 'package.module:function' or 'package.module'")
    s.add_argument("--task-params", default="{}", type=json.loads, help="JSON object passed to the task function")
    s.add_argument("--kinds", default="conv", type=_kinds, help=f"comma-separated unit kinds ({','.join(COMPONENT_KINDS)}) or one of {' / '.join(KIND_PRESETS)}")
    s.add_argument("--include", default="*", type=_csv, help="comma-separated glob patterns of module names to keep")
    s.add_argument("--exclude", default="", type=_csv, help="comma-separated glob patterns of module names to drop")
    s.add_argument("--masks", type=int, default=None, help="training masks m of the run (with --method ols: refuse m <= components now)")
    s.add_argument("--method", choices=SOLVER_METHODS, default=None, help="the run's solver method")
    add_loader(s)
    s.add_argument("--unreachable", choices=UNREACHABLE_POLICIES, default="error",
                   help="component groups that cannot be ablated exactly (dry pass): stop naming them, or drop them with a warning")
    add_batching(s)
    s.add_argument("--run-shape", type=json.loads, default=None,
                   help="JSON of coar.resources.RunShape (masks, shards, held-out masks...): refuse a run whose memory "
                        "or disk cannot fit this machine, before anything is saved")

    s = add("collect", "Sample one shard of ablation masks and record the ablated model's outputs on every example.")
    s.add_argument("--out", required=True, help="shard HDF5 file to write (appears only when complete)")
    s.add_argument("--shard", type=int, default=0, help="shard index (its masks depend on seed and this alone)")
    s.add_argument("--shards", type=int, default=1, help="number of shards the masks are split into")
    s.add_argument("--masks", type=int, required=True, help="total number of masks m over all shards")
    s.add_argument("--alpha", type=float, required=True, help="probability that a component is ablated")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--purpose", choices=["train", "heldout"], default="train", help="random stream: training or held-out masks")
    s.add_argument("--stream", type=int, default=None, help="random stream index (default: the shard index)")
    s.add_argument("--count-coincidences-with", default=None,
                   help="dataset file: record how many masks equal one of its masks (held-out masks; they are kept)")
    s.add_argument("--ablation", choices=ABLATION_MODES, default="weight")
    s.add_argument("--output-fn", default=None, help="output function; default: the task's own")
    add_batching(s)
    s.add_argument("--device", choices=DEVICES, default="auto")
    s.add_argument("--precision", choices=PRECISIONS, default="fp32", help="arithmetic precision (autocast) of the ablated passes")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    s.add_argument("--fold-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="fold eval-mode BatchNorms into the preceding convs (exact; coar.fastpath)")
    s.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="NHWC activations")
    s.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the model")
    add_loader(s)

    s = add("merge", "Check that shards belong to this run and tile all rows, then merge them into one dataset.")
    s.add_argument("--out", required=True)
    s.add_argument("--masks", type=int, required=True, help="total number of masks m the shards must cover")
    s.add_argument("shards", nargs="+", help="shard files")
    _provenance_options(s, alpha=True)

    s = add("fit", "Fit one linear model per example (attributions) on a dataset, streamed in row chunks.")
    s.add_argument("--data", required=True, help="merged dataset file")
    s.add_argument("--out", required=True, help="attributions HDF5 file to write")
    s.add_argument("--method", choices=SOLVER_METHODS, default="ols")
    s.add_argument("--backend", choices=SOLVER_BACKENDS, default="auto")
    s.add_argument("--chunk-rows", type=int, default=4096)
    _provenance_options(s, alpha=True)
    s.add_argument("--example-block", type=int, default=None,
                   help="examples solved together (default: as many as the memory budget allows)")
    s.add_argument("--memory-budget", type=_memory_budget, default=None,
                   help="GB for the fit's arrays, or 'auto': the job's cgroup or SLURM limit (else physical memory, at most half) "
                        "less the process's own resident memory and a margin")

    s = add("evaluate", "Correlate attribution predictions with true outputs on held-out masks.")
    s.add_argument("--attributions", required=True)
    s.add_argument("--alpha", type=float, required=True, help="training alpha (the headline numbers)")
    s.add_argument("--heldout", type=_alpha_path, action="append", required=True, help="ALPHA=PATH of a held-out shard (repeat)")
    s.add_argument("--out", required=True, help="evaluation.json to write")
    _provenance_options(s, alpha=False)

    s = add("summarize", "Write summary.md and plots from a finished run.")
    s.add_argument("--evaluation", required=True)
    s.add_argument("--timings", nargs="*", default=[], help="Snakemake benchmark files of the steps")
    s.add_argument("--out", required=True, help="summary.md to write")
    s.add_argument("--plot", required=True, help="PNG of the per-example correlations to write (linked from summary.md)")

    s = add("baseline", "Attribute with a baseline method (leave-one-out, grad x param, conductance, internal influence).")
    s.add_argument("--method", required=True, choices=BASELINE_METHODS)
    s.add_argument("--out", required=True, help="attributions HDF5 file to write (same format as COAR's)")
    s.add_argument("--ablation", choices=ABLATION_MODES, default="weight", help="ablation that loo and grad_x_param model")
    s.add_argument("--output-fn", default=None, help="output function; default: the task's own")
    add_batching(s)
    s.add_argument("--n-steps", type=int, default=50, help="conductance, internal_influence: integration steps")
    s.add_argument("--device", choices=DEVICES, default="auto")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_loader(s)

    s = add("compare", "Score COAR and baselines on the same held-out masks: the methods x alphas table.")
    s.add_argument("--method", type=_name_path, action="append", required=True, help="NAME=PATH of an attributions file (repeat)")
    s.add_argument("--alpha", type=float, required=True, help="training alpha")
    s.add_argument("--heldout", type=_alpha_path, action="append", required=True, help="ALPHA=PATH of a held-out shard (repeat)")
    s.add_argument("--out", required=True, help="comparison.json to write")
    s.add_argument("--table", required=True, help="Markdown table to write")
    _provenance_options(s, alpha=False)

    s = add("figures", "Draw the report's figures from a comparison (one PNG file per option).")
    s.add_argument("--comparison", required=True, help="comparison.json")
    s.add_argument("--method", type=_name_path, action="append", required=True,
                   help="NAME=PATH of an attributions file (repeat; the first picks examples and gives per-layer sums)")
    s.add_argument("--heldout", type=_alpha_path, action="append", required=True, help="ALPHA=PATH of a held-out shard (repeat)")
    s.add_argument("--timings", nargs="*", default=[], help="Snakemake benchmark files of the steps")
    for field in REPORT_FIGURES:
        s.add_argument(f"--{field.replace('_', '-')}", required=True, metavar="PNG", help=f"{field.replace('_', ' ')} figure to write")

    s = add("edit", "COAR-Edit task on offline digits: train, attribute, edit, report in <run-dir>/edits/<task>/.")
    s.add_argument("--task", required=True, help="fix_errors, forget_class, subpopulation, backdoor or typographic (coar.edit.tasks.TASKS)")
    s.add_argument("--params", default="{}", type=json.loads, help="JSON object of task params (defaults: coar.edit.tasks.<task>.DEFAULTS)")
    s.add_argument("--seeds", type=_int_list, default=None,
                   help="comma-separated seeds, e.g. 0,1,2,3,4: one run each (seed-<s>/), then seeds.json with mean and spread")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    s = add("selfcheck", "Check the mask op, run_masked and the solver on a device, then print a throughput table.",
            run_dir=False)
    s.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda when a GPU is visible")
    s.add_argument("--quick", action="store_true", help="small sizes, no resnet50 (CI)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        _run(args)
    except Exception as exc:  # one clear line for users; COAR_DEBUG=1 shows the traceback
        if os.environ.get("COAR_DEBUG") == "1":
            raise
        print(f"coar {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _loader(args: argparse.Namespace):  # -> coar.saved_task.LoaderOptions, imported late like steps
    from coar.saved_task import LoaderOptions

    return LoaderOptions(args.loader_workers, args.loader_pin_memory, args.loader_cache_mb)


def _run(args: argparse.Namespace) -> None:
    from coar import steps  # imported late so `coar --help` is instant
    from coar.fastpath import FastPath

    if args.command == "prepare":
        info = steps.prepare(args.task, args.task_params, args.kinds, args.include, args.exclude, args.run_dir,
                             masks=args.masks, method=args.method, loader=_loader(args), unreachable=args.unreachable,
                             masks_per_pass=args.masks_per_pass, max_batch=args.max_batch, shape=_shape(args.run_shape))
        print(json.dumps({k: info[k] for k in ("n_examples", "n_components", "dropped_components", "task_info")}, indent=1))
    elif args.command == "collect":
        steps.collect(args.run_dir, args.out, shard=args.shard, shards=args.shards, masks=args.masks, alpha=args.alpha,
                      seed=args.seed, ablation=args.ablation, output_fn=args.output_fn, masks_per_pass=args.masks_per_pass,
                      max_batch=args.max_batch, device=args.device, purpose=args.purpose, stream=args.stream,
                      count_coincidences_with=args.count_coincidences_with, threads=args.threads, precision=args.precision,
                      loader=_loader(args),
                      fast_path=FastPath(fold_bn=args.fold_bn, channels_last=args.channels_last, compile=args.compile))
    elif args.command == "merge":
        steps.merge(args.run_dir, args.shards, args.out, args.masks, _expected(args))
    elif args.command == "fit":
        print(json.dumps(steps.fit(args.run_dir, args.data, args.out, method=args.method, backend=args.backend,
                                   chunk_rows=args.chunk_rows, example_block=args.example_block,
                                   memory_budget=args.memory_budget, expected=_expected(args))))
    elif args.command == "evaluate":
        result = steps.evaluate(args.run_dir, args.attributions, dict(args.heldout), args.alpha, args.out,
                                _expected(args))
        print(f"mean held-out correlation at alpha={args.alpha:g}: {result['mean_correlation']:.3f}")
    elif args.command == "summarize":
        print(steps.summarize(args.run_dir, args.evaluation, args.timings, args.out, args.plot))
    elif args.command == "baseline":
        print(json.dumps(steps.baseline(args.run_dir, args.out, method=args.method, ablation=args.ablation,
                                        output_fn=args.output_fn, masks_per_pass=args.masks_per_pass,
                                        max_batch=args.max_batch, n_steps=args.n_steps, device=args.device,
                                        threads=args.threads, loader=_loader(args))))
    elif args.command == "compare":
        result = steps.compare(args.run_dir, dict(args.method), dict(args.heldout), args.alpha, args.out, args.table,
                               _expected(args))
        print(f"mean held-out correlation at alpha={args.alpha:g}: "
              + ", ".join(f"{m} {r[result['alpha']]:.3f}" for m, r in result["mean_correlation"].items()))
    elif args.command == "figures":
        from coar.report import FigurePaths

        paths = FigurePaths(*(Path(getattr(args, field)) for field in REPORT_FIGURES))
        for path in steps.figures(args.run_dir, args.comparison, dict(args.method), dict(args.heldout), args.timings,
                                  paths):
            print(path)
    elif args.command == "selfcheck":
        from coar.selfcheck import selfcheck

        if not selfcheck(args.device, quick=args.quick):
            raise RuntimeError("selfcheck found mismatches (see FAIL lines above)")
    elif args.command == "edit":
        report = steps.edit(args.run_dir, args.task, args.params, threads=args.threads, seeds=args.seeds)
        if args.seeds is None:
            print(json.dumps({"results": report["results"], "all_targets_met": report["all_targets_met"]}, indent=1))
        else:
            print(json.dumps({"targets": report["targets"], "all_targets_met_on_mean": report["all_targets_met_on_mean"]},
                             indent=1))


def _shape(value: dict | None):  # -> coar.resources.RunShape | None
    from coar.resources import RunShape

    return None if value is None else RunShape(**value)


def _expected(args: argparse.Namespace) -> dict:
    """The provenance values given on the command line (evaluate and compare take --alpha separately)."""
    from coar.run import Run

    alpha = args.alpha if args.command in ("merge", "fit") else None
    return Run(args.run_dir).provenance( alpha=alpha, seed=args.seed, ablation=args.ablation,
                            output_fn=args.output_fn, precision=args.precision)


if __name__ == "__main__":
    sys.exit(main())

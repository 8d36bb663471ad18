"""The `coar` command line: one subcommand per workflow step, so every rule runs by hand too.

    coar prepare  --task coar.tasks.digits:task --run-dir results/digits
    coar collect  --run-dir results/digits --task coar.tasks.digits:task --shard 0 --shards 4 --masks 4000 --alpha 0.05 --out shard-0.h5
    coar merge    --run-dir results/digits --masks 4000 --expect-alpha 0.05 --out dataset.h5 shard-*.h5
    coar fit      --run-dir results/digits --data dataset.h5 --expect-alpha 0.05 --out attributions.h5
    coar fit-surrogate --run-dir results/digits --data dataset.h5 --attributions attributions.h5 --expect-alpha 0.05 \
                   --kind projected_quadratic --out surrogate.h5
    coar fit-round --run-dir results/digits --round 1 --previous rounds/round-0.h5 --heldout heldout/alpha-0.05.h5 \
                   --min-gain 0.005 --confidence 0.95 --max-masks 20000 --out-state rounds/round-1.h5 \
                   --out-score rounds/round-1.json shards/shard-1.h5
    coar evaluate --run-dir results/digits --attributions attributions.h5 --train-alpha 0.05 --heldout 0.05=h.h5
    coar summarize --run-dir results/digits --evaluation evaluation.json --out summary.md --plot plots/correlation_histogram.png
    coar baseline --run-dir results/digits --method loo --out baselines/loo.h5
    coar compare  --run-dir results/digits --train-alpha 0.05 --method coar=attributions.h5 --method loo=baselines/loo.h5 \
                  --heldout 0.05=h.h5 --out comparison.json --table comparison.md
    coar figures  --run-dir results/digits --train-alpha 0.05 --comparison comparison.json --method coar=attributions.h5 \
                  --heldout 0.05=h.h5 --correlation-table plots/correlation_table.png \
                  --correlation-distributions plots/correlation_distributions.png \
                  --predicted-vs-true plots/predicted_vs_true.png --layer-attributions plots/layer_attributions.png \
                  --step-timings plots/step_timings.png
    coar check-edits --run-dir results/digits --edits '[{"name": "forget_3", ...}]' --task coar.tasks.digits:task
    coar edit-plan  --run-dir results/digits --edit '{"name": "forget_3", ...}' --attributions attributions.h5 \
                    --out edits/forget_3/plan.json
    coar edit-apply --run-dir results/digits --edit '{"name": "forget_3", ...}' --plan edits/forget_3/plan.json \
                    --attributions attributions.h5 --out-dir edits/forget_3
    coar selfcheck --device cuda   # the op, run_masked, the cupy solver and a throughput table on one device
    coar show results/digits --example 1610 --top 10 --verify   # largest predicted effects (and realised ones)
    coar show results/digits --component 'blocks.0.conv1[3]'     # the examples it moves most, both signs
    coar show results/digits --edit forget_3                     # what an edit ablated and what it did
    coar export results/digits --format csv                      # results/digits/attributions.csv
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Sequence

from coar.constants import (ABLATION_MODES, BASELINE_METHODS, COMPONENT_KINDS, DEFAULT_MASKS_PER_PASS, DEFAULT_MAX_BATCH,
                            DEVICES, EXPORT_FORMATS, KIND_PRESETS, PRECISIONS, REPORT_FIGURES, SOLVER_BACKENDS, SOLVER_METHODS,
                            SURROGATE_KINDS, UNREACHABLE_POLICIES)


def _string_list(text: str) -> list[str]:
    """A JSON list of strings (what the workflow passes), or one string as a list of one: never
    split at commas, which glob patterns such as `blocks.[01].conv[1,2]` contain."""
    try:
        values = json.loads(text) if text.startswith("[") else [text]
    except ValueError:  # a glob pattern starting with "[", not JSON
        values = [text]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise argparse.ArgumentTypeError(f"expected a JSON list of strings or one string, got {text!r}")
    return [v for v in values if v]


def _kinds(text: str) -> str | list[str]:
    return text if text in KIND_PRESETS else _string_list(text)


def _row_range(text: str) -> tuple[int, int]:
    start, sep, stop = text.partition(":")
    try:
        return int(start), int(stop)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP (integers), got {text!r}") from None


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


def _provenance_options(s: argparse.ArgumentParser, alpha: str) -> None:
    """Options naming how the step's input data must have been made; a value not given is not
    checked. `alpha` is the step's alpha option: merge and fit check the data's (--expect-alpha),
    evaluate, compare and figures score attributions made at --train-alpha."""
    if alpha == "expect":
        s.add_argument("--expect-alpha", type=float, default=None, help="alpha the data must have been collected at")
    else:
        s.add_argument("--train-alpha", type=float, required=True,
                       help="alpha the attributions were trained at (the headline numbers)")
    s.add_argument("--seed", type=int, default=None, help="seed the data must have been collected with")
    s.add_argument("--ablation", choices=ABLATION_MODES, default=None, help="ablation the data must use")
    s.add_argument("--output-fn", default=None, help="output function the data must use; default: the task's own")
    s.add_argument("--precision", choices=PRECISIONS, default=None, help="precision the data must have been collected in")


def _task_options(s: argparse.ArgumentParser) -> None:
    """The task a step reopens: the config's, refused when the run folder's prepare.json names another."""
    s.add_argument("--task", required=True, help="the config's task function (prepare.json must name the same)")
    s.add_argument("--task-params", default="{}", type=json.loads, help="the config's task params as a JSON object")


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
    s.add_argument("--kinds", default="conv", type=_kinds,
                   help=f"unit kinds ({','.join(COMPONENT_KINDS)}): one, a JSON list, or one of {' / '.join(KIND_PRESETS)}")
    s.add_argument("--include", default="*", type=_string_list, help="glob patterns of module names to keep: one, or a JSON list")
    s.add_argument("--exclude", default="[]", type=_string_list, help="glob patterns of module names to drop: one, or a JSON list")
    s.add_argument("--preset", default=None, help="a named component set (coar/presets.py); replaces --kinds, --include and --exclude")
    s.add_argument("--masks", type=int, default=None, help="training masks m of the run (with --method ols: refuse m <= components now)")
    s.add_argument("--method", choices=SOLVER_METHODS, default=None, help="the run's solver method")
    add_loader(s)
    s.add_argument("--unreachable", choices=UNREACHABLE_POLICIES, default="error",
                   help="component groups that cannot be ablated exactly (dry pass): stop naming them, or drop them with a warning")
    add_batching(s)

    s = add("collect", "Sample one shard of ablation masks and record the ablated model's outputs on every example.")
    _task_options(s)
    s.add_argument("--out", required=True, help="shard HDF5 file to write (appears only when complete)")
    s.add_argument("--shard", type=int, default=0, help="shard index (its masks depend on seed and this alone)")
    s.add_argument("--shards", type=int, default=1, help="number of shards the masks are split into")
    s.add_argument("--masks", type=int, default=None, help="total number of masks m over all shards (or --rows)")
    s.add_argument("--rows", type=_row_range, default=None,
                   help="START:STOP, this shard's mask rows (instead of --masks and --shards)")
    s.add_argument("--alpha", type=float, required=True, help="probability that a component is ablated")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--purpose", choices=["train", "heldout"], default="train", help="random stream: training or held-out masks")
    s.add_argument("--stream", type=int, default=None, help="random stream index (default: the shard index)")
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
    _provenance_options(s, alpha="expect")

    s = add("fit", "Fit one linear model per example (attributions) on a dataset, streamed in row chunks.")
    source = s.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="merged dataset file")
    source.add_argument("--state", help="instead: the last round's statistics of a masks: auto run (fit-round)")
    s.add_argument("--out", required=True, help="attributions HDF5 file to write")
    s.add_argument("--method", choices=SOLVER_METHODS, default="ols")
    s.add_argument("--backend", choices=SOLVER_BACKENDS, default="auto")
    s.add_argument("--chunk-rows", type=int, default=4096)
    _provenance_options(s, alpha="expect")
    s.add_argument("--example-block", type=int, default=None,
                   help="examples solved together (default: as many as the memory budget allows)")
    s.add_argument("--memory-budget", type=_memory_budget, default=None,
                   help="GB for the fit's arrays, or 'auto': the job's cgroup or SLURM limit (else physical memory, at most half) "
                        "less the process's own resident memory and a margin")

    s = add("fit-surrogate", "Fit a surrogate beyond linear COAR (config `surrogate`) on a dataset, streamed in row "
                             "chunks, with its basis from the run's fitted attributions.")
    s.add_argument("--data", required=True, help="merged dataset file (the rows the attributions were fitted on)")
    s.add_argument("--attributions", required=True, help="the run's attributions.h5 (their weights give the basis)")
    s.add_argument("--out", required=True, help="surrogate HDF5 file to write")
    s.add_argument("--kind", choices=SURROGATE_KINDS, default="projected_quadratic")
    s.add_argument("--rank", type=_positive, default=10, help="shared projections of the mask")
    s.add_argument("--penalty", type=float, default=10.0, help="ridge penalty on the standardised quadratic terms")
    s.add_argument("--chunk-rows", type=_positive, default=4096)
    _provenance_options(s, alpha="expect")

    s = add("fit-round", "One round of a masks: auto run: add the round's shards to the previous round's statistics, "
                         "fit, score on held-out masks and decide whether to stop.")
    s.add_argument("--round", type=int, required=True, help="this round's number, from 0")
    s.add_argument("--previous", default=None, help="the previous round's statistics (not for round 0)")
    s.add_argument("--heldout", required=True, help="held-out masks and outputs at the training alpha")
    s.add_argument("--out-state", required=True, help="this round's statistics (HDF5) to write")
    s.add_argument("--out-score", required=True, help="this round's score and decision (JSON) to write")
    s.add_argument("--method", choices=SOLVER_METHODS, default="ols")
    s.add_argument("--backend", choices=SOLVER_BACKENDS, default="auto")
    s.add_argument("--chunk-rows", type=int, default=4096)
    s.add_argument("--example-block", type=int, default=None, help="as for fit: the round refuses a fit of several blocks")
    s.add_argument("--memory-budget", type=_memory_budget, default=None, help="as for fit")
    s.add_argument("--min-gain", type=float, required=True, help="masks_auto.min_gain")
    s.add_argument("--confidence", type=float, required=True, help="masks_auto.confidence")
    s.add_argument("--max-masks", type=int, required=True, help="the mask budget (whole rounds)")
    _provenance_options(s, alpha="expect")
    s.add_argument("shards", nargs="+", help="this round's shard files")

    s = add("evaluate", "Correlate attribution predictions with true outputs on held-out masks.")
    s.add_argument("--attributions", required=True)
    s.add_argument("--heldout", type=_alpha_path, action="append", required=True, help="ALPHA=PATH of a held-out shard (repeat)")
    s.add_argument("--out", required=True, help="evaluation.json to write")
    s.add_argument("--training-data", default=None,
                   help="merged dataset the attributions were fitted on: count held-out masks equal to one of its masks")
    s.add_argument("--surrogate", default=None, help="the run's surrogate.h5 (fit-surrogate): score it too")
    _provenance_options(s, alpha="train")

    s = add("summarize", "Write summary.md and plots from a finished run.")
    s.add_argument("--evaluation", required=True)
    s.add_argument("--timings", nargs="*", default=[], help="Snakemake benchmark files of the steps")
    s.add_argument("--out", required=True, help="summary.md to write")
    s.add_argument("--plot", required=True, help="PNG of the per-example correlations to write (linked from summary.md)")
    s.add_argument("--rounds", nargs="*", default=[], help="masks: auto: every round's score (fit-round), in order")
    s.add_argument("--curve", default=None, help="masks: auto: PNG of the correlation against masks to write")
    _provenance_options(s, alpha="train")

    s = add("baseline", "Attribute with a baseline method (leave-one-out, grad x param, conductance, internal influence).")
    s.add_argument("--method", required=True, choices=BASELINE_METHODS)
    _task_options(s)
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
    s.add_argument("--heldout", type=_alpha_path, action="append", required=True, help="ALPHA=PATH of a held-out shard (repeat)")
    s.add_argument("--out", required=True, help="comparison.json to write")
    s.add_argument("--table", required=True, help="Markdown table to write")
    s.add_argument("--surrogate", default=None, help="the run's surrogate.h5 (fit-surrogate): scored as method 'surrogate'")
    _provenance_options(s, alpha="train")

    s = add("figures", "Draw the report's figures from a comparison (one PNG file per option).")
    s.add_argument("--comparison", required=True, help="comparison.json")
    s.add_argument("--method", type=_name_path, action="append", required=True,
                   help="NAME=PATH of an attributions file (repeat; the first picks examples and gives per-layer sums)")
    s.add_argument("--heldout", type=_alpha_path, action="append", required=True, help="ALPHA=PATH of a held-out shard (repeat)")
    s.add_argument("--timings", nargs="*", default=[], help="Snakemake benchmark files of the steps")
    for field in REPORT_FIGURES:
        s.add_argument(f"--{field.replace('_', '-')}", required=True, metavar="PNG", help=f"{field.replace('_', ' ')} figure to write")
    _provenance_options(s, alpha="train")

    for name, help in (("edit-plan", "Rank the components for one edit (config `edits`) from the run's attributions: plan.json."),
                       ("edit-apply", "Choose k on validation examples, check it, write the edited weights and report.json.")):
        s = add(name, help)
        s.add_argument("--edit", required=True, type=json.loads, help="JSON object: one entry of config `edits`")
        s.add_argument("--attributions", required=True, help="the run's attributions.h5")
        if name == "edit-plan":
            s.add_argument("--out", required=True, help="plan.json to write")
        else:
            s.add_argument("--plan", required=True, help="plan.json of this edit (coar edit-plan)")
            s.add_argument("--out-dir", required=True, help="folder for weights.safetensors, ablated.json, report.json")
            s.add_argument("--masks-per-pass", type=_positive, default=DEFAULT_MASKS_PER_PASS,
                           help="values of k evaluated in one forward pass")
            s.add_argument("--surrogate", default=None, help="the run's surrogate.h5 (fit-surrogate): its predictions "
                           "judge the candidates and the checks, the linear ones reported beside them")
        s.add_argument("--max-batch", type=_positive, default=DEFAULT_MAX_BATCH,
                       help="most rows (masks x examples) per forward pass")
        s.add_argument("--device", choices=DEVICES, default="auto")
        s.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        _task_options(s)
        _provenance_options(s, alpha="expect")
    s = add("check-edits", "Check every edit of config `edits` against the prepared run, before any collection: "
                           "components, k, labels, groups, ids and non-empty, disjoint selections (coar.edit.checks).")
    given = s.add_mutually_exclusive_group(required=True)
    given.add_argument("--edits", type=json.loads, help="JSON list: the config's `edits`")
    given.add_argument("--edits-stamps", metavar="DIR", help="the run's config stamps folder (results/<run>/config): "
                       "the edits of its one edits-<digest>.json, the config's as the workflow last read it (the "
                       "prepare job checks them so, without naming them: a changed edit never re-prepares)")
    s.add_argument("--output-fn", default=None, help="the config's output function (for `misclassified`); "
                                                     "default: the task's own")
    s.add_argument("--device", choices=DEVICES, default="auto")
    s.add_argument("--log", default=None, help="file to write what each edit selects, or the refusal, to")
    _task_options(s)
    s = add("selfcheck", "Check the mask op, run_masked and the solver on a device, then print a throughput table.",
            run_dir=False)
    s.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda when a GPU is visible")
    s.add_argument("--quick", action="store_true", help="small sizes, no resnet50 (CI)")

    s = add("explore", "Build a run's attribution explorer (explorer.html) if missing or older than the run's files "
            "(an edit made since, say), then open it in a web browser (on a machine without a display, print "
            "where it is).", run_dir=False)
    s.add_argument("run", help="run folder (results/<run>) of a finished run")
    s.add_argument("--out", default=None, help="page to write (default: <run>/explorer.html)")
    s.add_argument("--rebuild", action="store_true", help="build the page even if it is up to date")
    s.add_argument("--no-open", action="store_true", help="build if needed and print the page's path, without opening it")

    s = add("show", "Print the components with the largest predicted effects on one example, or the examples one "
            "component moves most (from a finished run's attributions).", run_dir=False)
    s.add_argument("run", metavar="RUN", help="run folder (results/<run>)")
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--example", help="example id (example_ids.json), or #N for the example at position N")
    what.add_argument("--component", help="component name, module[unit] (see coar.open(RUN).components)")
    what.add_argument("--edit", help="an applied edit's name (config `edits`): what it ablated and what it did, "
                      "its files checked against the digests report.json records")
    s.add_argument("--top", type=int, default=10, help="rows to print (per sign with --component)")
    s.add_argument("--verify", action="store_true",
                   help="with --example: ablate each listed component for real and print the realised change beside it")
    s.add_argument("--task", default=None, help="with --verify: the run's task function (the config's task.spec), "
                   "checked against prepare.json; needed unless the run's task is shipped with coar")
    s.add_argument("--task-params", default=None, type=json.loads, help="with --task: its params as a JSON object")

    s = add("export", "Write a finished run's attributions as CSV, Parquet or npz (module coar.export; in Python: coar.open(run).to_pandas()).", run_dir=False)
    s.add_argument("run", metavar="RUN", help="run folder (results/<run>)")
    s.add_argument("--format", choices=EXPORT_FORMATS, default="csv", help="parquet needs pyarrow")
    s.add_argument("--out", default=None, help="file to write; default: RUN/attributions.<format>")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        _run(args)
    except Exception as exc:  # one clear line for users; COAR_DEBUG=1 shows the traceback
        if os.environ.get("COAR_DEBUG") == "1":
            raise
        foreign = _raised_outside_coar(exc)
        print(f"coar {args.command}: error: {type(exc).__name__ + ': ' if foreign is exc else ''}{exc}"
              f"{_last_frames(foreign)}", file=sys.stderr)
        return 1
    return 0


PACKAGE_DIR = Path(__file__).resolve().parent
SHOWN_FRAMES = 4


def _raised_outside_coar(exc: BaseException | None) -> BaseException | None:
    """`exc`, or the exception that caused it, when its innermost frame is not coar's own code
    (the user's task function, or a library it calls); None when coar raised it. coar's own
    errors are written to be read alone; others need their frames."""
    while exc is not None:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None and PACKAGE_DIR not in Path(tb.tb_frame.f_code.co_filename).resolve().parents:
            return exc
        exc = exc.__cause__
    return None


def _last_frames(exc: BaseException | None) -> str:
    """The last SHOWN_FRAMES frames of an exception raised outside coar, and how to see them all."""
    if exc is None:
        return ""
    shown = "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__)[-SHOWN_FRAMES:])).rstrip()
    return f"\nlast frames (COAR_DEBUG=1 shows the whole traceback):\n{shown}"


def _loader(args: argparse.Namespace):  # -> coar.saved_task.LoaderOptions, imported late like steps
    from coar.saved_task import LoaderOptions

    return LoaderOptions(args.loader_workers, args.loader_pin_memory, args.loader_cache_mb)


def _run(args: argparse.Namespace) -> None:
    if args.command in ("show", "export"):
        from coar import show

        if args.command == "export":
            print(show.export_run(args.run, args.format, args.out))
        elif args.edit is not None:
            print(show.show_edit(args.run, args.edit))
        else:
            print(show.show(args.run, args.example, args.component, args.top, args.verify,
                            None if args.task is None else (args.task, args.task_params or {})))
        return
    from coar import steps  # imported late so `coar --help` is instant
    from coar.rounds import StopRule
    from coar.fastpath import FastPath

    if args.command == "prepare":
        if args.preset is not None:
            from coar.presets import preset

            chosen = preset(args.preset)
            args.kinds, args.include, args.exclude = list(chosen.kinds), list(chosen.include), list(chosen.exclude)
        info = steps.prepare(args.task, args.task_params, args.kinds, args.include, args.exclude, args.run_dir,
                             masks=args.masks, method=args.method, loader=_loader(args), unreachable=args.unreachable,
                             masks_per_pass=args.masks_per_pass, max_batch=args.max_batch)
        print(json.dumps({k: info[k] for k in ("n_examples", "n_components", "dropped_components", "task_info")}, indent=1))
    elif args.command == "collect":
        steps.collect(args.run_dir, args.out, task_spec=args.task, task_params=args.task_params, shard=args.shard,
                      shards=args.shards, masks=args.masks, rows=args.rows, alpha=args.alpha,
                      seed=args.seed, ablation=args.ablation, output_fn=args.output_fn, masks_per_pass=args.masks_per_pass,
                      max_batch=args.max_batch, device=args.device, purpose=args.purpose, stream=args.stream,
                      threads=args.threads, precision=args.precision, loader=_loader(args),
                      fast_path=FastPath(fold_bn=args.fold_bn, channels_last=args.channels_last, compile=args.compile))
    elif args.command == "merge":
        steps.merge(args.run_dir, args.shards, args.out, args.masks, _expected(args))
    elif args.command == "fit" and args.state:
        print(json.dumps(steps.fit_state(args.run_dir, args.state, args.out, method=args.method, backend=args.backend,
                                         expected=_expected(args))))
    elif args.command == "fit":
        print(json.dumps(steps.fit(args.run_dir, args.data, args.out, method=args.method, backend=args.backend,
                                   chunk_rows=args.chunk_rows, example_block=args.example_block,
                                   memory_budget=args.memory_budget, expected=_expected(args))))
    elif args.command == "fit-surrogate":
        print(json.dumps(steps.fit_surrogate(args.run_dir, args.data, args.attributions, args.out, kind=args.kind,
                                             rank=args.rank, penalty=args.penalty, chunk_rows=args.chunk_rows,
                                             expected=_expected(args))))
    elif args.command == "fit-round":
        steps.fit_round(args.run_dir, args.shards, args.out_state, args.out_score, round=args.round,
                        previous=args.previous, heldout=args.heldout,
                        rule=StopRule(args.min_gain, args.confidence, args.max_masks), method=args.method,
                        backend=args.backend, chunk_rows=args.chunk_rows, example_block=args.example_block,
                        memory_budget=args.memory_budget, expected=_expected(args))
    elif args.command == "evaluate":
        result = steps.evaluate(args.run_dir, args.attributions, dict(args.heldout), args.train_alpha, args.out,
                                _expected(args), args.training_data, args.surrogate)
        print(f"mean held-out correlation at alpha={args.train_alpha:g}: {result['mean_correlation']:.3f}")
    elif args.command == "summarize":
        print(steps.summarize(args.run_dir, args.evaluation, args.timings, args.out, args.plot, args.train_alpha,
                              _expected(args), rounds=args.rounds, curve=args.curve))
    elif args.command == "baseline":
        print(json.dumps(steps.baseline(args.run_dir, args.out, task_spec=args.task, task_params=args.task_params,
                                        method=args.method, ablation=args.ablation,
                                        output_fn=args.output_fn, masks_per_pass=args.masks_per_pass,
                                        max_batch=args.max_batch, n_steps=args.n_steps, device=args.device,
                                        threads=args.threads, loader=_loader(args))))
    elif args.command == "compare":
        result = steps.compare(args.run_dir, dict(args.method), dict(args.heldout), args.train_alpha, args.out,
                               args.table, _expected(args), args.surrogate)
        print(f"mean held-out correlation at alpha={args.train_alpha:g}: "
              + ", ".join(f"{m} {r[result['alpha']]:.3f}" for m, r in result["mean_correlation"].items()))
    elif args.command == "figures":
        from coar.report import FigurePaths

        paths = FigurePaths(*(Path(getattr(args, field)) for field in REPORT_FIGURES))
        for path in steps.figures(args.run_dir, args.comparison, dict(args.method), dict(args.heldout), args.timings,
                                  paths, args.train_alpha, _expected(args)):
            print(path)
    elif args.command in ("edit-plan", "edit-apply"):
        _edit(args)
    elif args.command == "check-edits":
        _check_edits(args)
    elif args.command == "selfcheck":
        from coar.selfcheck import selfcheck

        if not selfcheck(args.device, quick=args.quick):
            raise RuntimeError("selfcheck found mismatches (see FAIL lines above)")
    elif args.command == "explore":
        from coar.explorer import explore

        print(explore(args.run, args.out, rebuild=args.rebuild, open_browser=not args.no_open))


def _edit(args: argparse.Namespace) -> None:
    """The editing steps (coar.edit.steps), one edit of config `edits` each."""
    import torch

    from coar.edit import steps as edit_steps
    from coar.edit.spec import EditSpec

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = EditSpec.from_config(args.edit)
    if args.command == "edit-plan":
        edit_steps.plan(args.run_dir, spec, args.attributions, args.out, task=(args.task, args.task_params),
                        expected=_expected(args), device=args.device, max_batch=args.max_batch)
    else:
        report = edit_steps.apply(args.run_dir, spec, args.plan, args.attributions, args.out_dir,
                                  task=(args.task, args.task_params), expected=_expected(args), device=args.device,
                                  masks_per_pass=args.masks_per_pass, max_batch=args.max_batch,
                                  surrogate=args.surrogate)
        print(json.dumps({k: report[k] for k in ("k", "rule", "checks", "problems")}, indent=1))


def _check_edits(args: argparse.Namespace) -> None:
    """Every edit of config `edits` checked against the prepared run (coar.edit.checks); what
    each selects, or the refusal, also written to --log."""
    from coar.edit.checks import check_edits_on_run, stamped_edits
    from coar.edit.spec import check_edits

    try:
        edits = args.edits if args.edits is not None else stamped_edits(args.edits_stamps)
        lines = check_edits_on_run(args.run_dir, check_edits(edits), args.task, args.task_params, args.device,
                                   output_fn=args.output_fn)
    except Exception as error:
        if args.log:
            Path(args.log).write_text(f"refused: {error}\n")
        raise
    if args.log:  # the lines were logged (stderr) as they were checked
        Path(args.log).write_text("".join(f"{line}\n" for line in lines) or "no edits\n")


def _expected(args: argparse.Namespace) -> dict:
    """The provenance values given on the command line (--train-alpha is passed separately)."""
    from coar.run import Run

    return Run(args.run_dir).provenance(alpha=getattr(args, "expect_alpha", None), seed=args.seed,
                                        ablation=args.ablation, output_fn=args.output_fn, precision=args.precision)


if __name__ == "__main__":
    sys.exit(main())

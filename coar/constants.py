"""The allowed values of every choice a run makes, in one place.

The config schema (workflow/schemas/config.schema.yaml; its enums are tested against these),
the command line's choices, the rules' wildcard constraints and the modules that implement each
choice all read them from here. Nothing here imports torch, so `coar --help` and the workflow's
start-up stay fast.
"""

from __future__ import annotations

from typing import Literal, get_args

AblationMode = Literal["weight", "zero", "mean"]
ABLATION_MODES: tuple[str, ...] = get_args(AblationMode)
"""What an ablated unit outputs (coar/ablation.py); "weight" is the published one."""

BASELINE_METHODS = ("loo", "grad_x_param", "conductance", "internal_influence")
"""Baseline attribution methods scored beside COAR (coar/baselines.py)."""

SolverMethod = Literal["ols", "ridge", "lasso"]
SOLVER_METHODS: tuple[str, ...] = get_args(SolverMethod)
"""Estimators of the per-example linear models (coar/solver)."""

SurrogateKind = Literal["projected_quadratic"]
SURROGATE_KINDS: tuple[str, ...] = get_args(SurrogateKind)
"""Surrogates beyond linear COAR a run may fit and score beside it (coar.solver.surrogate)."""

SolverBackend = Literal["auto", "numpy", "cupy"]
SOLVER_BACKENDS: tuple[str, ...] = get_args(SolverBackend)
"""Array backends of the solver; "auto" is cupy when installed with a visible GPU, else numpy."""

PRECISIONS = ("fp32", "bf16", "fp16")
"""Arithmetic precision of the ablated forward passes; outputs are stored as float32 whatever it is."""

UNREACHABLE_POLICIES = ("error", "drop")
"""What prepare does with component groups its dry pass finds cannot be ablated exactly."""

DEFAULT_MAX_BATCH = 512
"""Rows (masks x examples) per forward pass when none is given: the config's default, every
command's and every function's (small passes stay in CPU cache; benchmarks/bench_forward.py)."""

DEFAULT_MASKS_PER_PASS = 8
"""Masks evaluated in one batched forward pass when none is given (config, commands, functions)."""

DEVICES = ("auto", "cpu", "cuda")
"""Where forward passes run; "auto" is CUDA when torch sees a GPU."""

COMPONENT_KINDS = ("conv", "linear", "head", "qkv", "kv_group", "neuron", "expert")
"""conv: Conv output channels (filters); linear: Linear output neurons; head: attention heads;
qkv: rows of nn.MultiheadAttention's packed q/k/v in-projection; kv_group: key/value heads shared
by several query heads (grouped or multi-query attention); neuron: MLP hidden units (input
columns of the down projection); expert: mixture-of-experts experts (coar/lm_components.py)."""

KIND_PRESETS = {
    "weight_rows": ("conv", "linear", "qkv"),  # the paper's "one row of every weight matrix"
    "all": COMPONENT_KINDS,
}
"""Names for common sets of component kinds."""

OUTPUT_FUNCTION_NAMES = ("margin", "lm_margin")
"""Registry names of the built-in output functions (coar/outputs.py); any other output function
is named by a 'package.module:function' spec."""

EDIT_DIRECTIONS = ("lower", "raise")
"""What an edit (config `edits`) does to its target examples' output: lower it or raise it."""

EDIT_SELECTIONS = ("verified", "prefix")
"""How an edit chooses its components (coar/edit/selection.py): each candidate checked on the
validation examples, or the published Welch-t prefix."""

EDIT_SELECTOR_KEYS = ("label", "ids", "misclassified", "group", "rest")
"""How an edit's `target` and `reference` pick examples (coar/edit/selectors.py); `rest`: reference only."""

DEFAULT_TASK_FUNCTION = "task"
"""The function a task spec without ':function' names."""

EXPORT_FORMATS = ("csv", "parquet", "npz")
"""File formats `coar export` writes attributions in (coar/export.py)."""

REPORT_FIGURES = ("correlation_table", "correlation_distributions", "predicted_vs_true", "layer_attributions",
                  "step_timings")
"""The report's figures (coar.report.FigurePaths), each written where `coar figures --<name>` says."""

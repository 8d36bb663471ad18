"""What a run needs: the memory of its largest collection job and the disk of its results,
from the same formulas the workflow's rules request (workflow/rules/collect.smk), checked
against what this machine (or the job's cgroup or SLURM allocation) has.

The workflow checks at start-up what the config alone shows (one example, one component: the
least any run needs, so an absurd `masks` is refused in a second), and again with the real
numbers of examples and components as soon as prepare has found them, before any collection
(`check_prepared_run`, the workflow's check_masks rule).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from coar.masks import largest_shard, mask_budget
from coar.solver.memory import job_memory

PYTHON_MIB = 1500
"""Python, torch and the task's libraries in a collection job (MiB)."""

HELDOUT_KEY = "evaluation.heldout_masks"
FIXES = {
    ("memory", "masks"): "use smaller shards (config key 'shard_masks', or more 'shards'), fewer masks (config key "
                         "'masks'), or run where more memory is allocated",
    ("memory", HELDOUT_KEY): f"use fewer held-out masks per alpha (config key {HELDOUT_KEY!r}), or run where more "
                             "memory is allocated",
    ("disk", "masks"): "use fewer masks (config key 'masks') or free some space",
    ("disk", HELDOUT_KEY): f"use fewer held-out masks per alpha (config key {HELDOUT_KEY!r}) or free some space",
}
"""What to change when a run needs too much memory or disk, by the config key that grows it."""


def collect_mem_mib(rows: int, n_examples: int, n_components: int, task_mib: float = 0.0,
                    cache_mib: float = 0.0) -> float:
    """Memory (MiB) of a collection job of `rows` masks, first attempt: Python, the task twice
    (saved and loaded), the loader cache, and three copies of its rows (masks as bytes,
    float32 outputs): the formula of the collect rules' `mem_mb`."""
    return PYTHON_MIB + 2 * task_mib + cache_mib + 3 * rows * (4 * n_examples + n_components) / 2**20


@dataclass(frozen=True)
class RunNeeds:
    """The memory of a run's largest collection job and the disk its results take, in bytes."""

    collect_bytes: int
    disk_bytes: int
    collect_key: str = "masks"
    """The config key whose value the largest collection job grows with ('masks' or 'evaluation.heldout_masks')."""
    disk_key: str = "masks"
    """The config key whose rows take most of the disk."""


@dataclass(frozen=True)
class RunShape:
    """The sizes of a run that its config fixes: training masks and shards, held-out masks per
    alpha and the number of alphas, attributions files (COAR and its baselines), loader cache."""

    masks: int
    shard_rows: int
    heldout_masks: int
    alphas: int
    attribution_files: int
    cache_mib: float = 0.0

    @classmethod
    def of_config(cls, config: dict) -> "RunShape":
        """The shape of a run of `config` (after the schema has filled in its defaults)."""
        evaluation = config["evaluation"]
        return cls(mask_budget(config), largest_shard(config), evaluation["heldout_masks"],
                   1 + (len(evaluation["alphas"]) or 2),  # the training alpha and the others (at most)
                   1 + len(evaluation["baselines"]), config["loader"]["cache_mb"])

    def needs(self, n_examples: int = 1, n_components: int = 1, task_mib: float = 0.0) -> RunNeeds:
        """What the run needs with `n_examples` and `n_components` (1 and 1: the least any run of
        this shape needs). Disk: every training and held-out row (masks as bytes, float32
        outputs), each attributions file, the task's files, and the largest shard once more while
        it is written (files appear complete, by rename)."""
        rows = self.shard_rows
        row_bytes = n_components + 4 * n_examples
        collect = collect_mem_mib(max(rows, self.heldout_masks), n_examples, n_components, task_mib, self.cache_mib)
        attributions = self.attribution_files * 4 * n_examples * (n_components + 1)
        training, heldout = (self.masks + rows) * row_bytes, self.alphas * self.heldout_masks * row_bytes
        disk = training + heldout + attributions + 2 * task_mib * 2**20
        return RunNeeds(int(collect * 2**20), int(disk),
                        collect_key=HELDOUT_KEY if self.heldout_masks > rows else "masks",
                        disk_key=HELDOUT_KEY if heldout > training else "masks")


def check_needs(needs: RunNeeds, results: str | Path, where: str | None = None) -> None:
    """Refuse, with the numbers, a run whose collection job needs more memory than this machine
    or allocation has, or whose results need more disk than is free where they go. The message
    starts with `where`, or else names the config key that makes the run this large."""
    memory = job_memory()
    if needs.collect_bytes > memory.bytes:
        raise ValueError(f"{where or f'config key {needs.collect_key!r}'}: a collection job needs about "
                         f"{needs.collect_bytes / 1e9:.3g} GB of memory but this machine has {memory}; "
                         f"{FIXES['memory', needs.collect_key]}")
    folder = Path(results).absolute()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needs.disk_bytes > free:
        raise ValueError(f"{where or f'config key {needs.disk_key!r}'}: the run's results need about "
                         f"{needs.disk_bytes / 1e9:.3g} GB of disk but {folder} has {free / 1e9:.3g} GB free; "
                         f"{FIXES['disk', needs.disk_key]}")


def check_prepared_run(run_dir: str | Path, shape: RunShape) -> RunNeeds:
    """`check_needs` at a prepared run's real sizes: its examples, components and task files."""
    from coar.run import Run  # loads torch: not needed by the start-up check

    run = Run(run_dir)
    task_mib = sum(run.file(name).stat().st_size for name in ("weights.safetensors", "examples.safetensors")) / 2**20
    needs = shape.needs(run.n_examples, run.n_components, task_mib)
    check_needs(needs, run.dir, f"run {run.name!r} ({run.n_examples} examples, {run.n_components} components)")
    return needs

"""What a run needs: the memory of its largest collection job and the disk of its results,
from the same formulas the workflow's rules request (workflow/rules/collect.smk), checked
against what this machine (or the job's cgroup or SLURM allocation) has.

The workflow checks at start-up what the config alone shows (one example, one component: the
least any run needs, so an absurd `masks` is refused in a second); `coar prepare` checks again
with the real numbers of examples and components, before anything is saved.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from coar.solver.memory import job_memory

PYTHON_MIB = 1500
"""Python, torch and the task's libraries in a collection job (MiB)."""


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


def run_needs(config: dict, n_examples: int = 1, n_components: int = 1, task_mib: float = 0.0) -> RunNeeds:
    """What the run of `config` needs with `n_examples` and `n_components` (1 and 1: the least
    any run of this config needs). Disk: every training and held-out row (masks as bytes,
    float32 outputs), each attributions file (COAR and its baselines) and the largest shard
    once more while it is written (files appear complete, by rename)."""
    rows = -(-config["masks"] // config["shards"])  # the largest shard (coar.masks.shard_ranges)
    heldout = config["evaluation"]["heldout_masks"]
    alphas = 1 + (len(config["evaluation"]["alphas"]) or 2)  # the training alpha and the others (at most)
    row_bytes = n_components + 4 * n_examples
    collect = collect_mem_mib(max(rows, heldout), n_examples, n_components, task_mib, config["loader"]["cache_mb"])
    attributions = (1 + len(config["evaluation"]["baselines"])) * 4 * n_examples * (n_components + 1)
    disk = (config["masks"] + rows + alphas * heldout) * row_bytes + attributions + 2 * task_mib * 2**20
    return RunNeeds(int(collect * 2**20), int(disk))


def check_needs(needs: RunNeeds, results: str | Path, where: str) -> None:
    """Refuse, with the numbers, a run whose collection job needs more memory than this machine
    or allocation has, or whose results need more disk than is free where they go."""
    memory = job_memory()
    if needs.collect_bytes > memory.bytes:
        raise ValueError(f"{where}: a collection job needs about {needs.collect_bytes / 1e9:.3g} GB of memory but "
                         f"this machine has {memory}; use more shards (config key 'shards'), fewer masks "
                         "(config key 'masks'), or run where more memory is allocated")
    folder = Path(results).absolute()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needs.disk_bytes > free:
        raise ValueError(f"{where}: the run's results need about {needs.disk_bytes / 1e9:.3g} GB of disk but "
                         f"{folder} has {free / 1e9:.3g} GB free; use fewer masks (config key 'masks') or "
                         "free some space")

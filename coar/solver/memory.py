"""The memory a job may use: the smallest of its cgroup limit, its SLURM allocation and the
machine's physical memory.

A job on a shared node sees the node's whole memory in /proc/meminfo, but is killed when it
exceeds its cgroup limit or SLURM allocation; sizing the fit from physical memory alone can
choose a plan that the scheduler kills. Every limit found is reported with where it came from.
The fit's arrays get what the limit leaves after the process's own resident memory (Python,
torch and the libraries: about 0.6 GB before the first array) and a margin.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a huge number near 2**63
RESERVE_MARGIN = 256 * 2**20
"""Bytes kept free beside the process's resident memory and the fit's arrays (allocator slack,
temporaries, HDF5 buffers)."""


@dataclass(frozen=True)
class MemoryLimit:
    """A memory limit in bytes and where it was found (e.g. "SLURM_MEM_PER_NODE")."""

    bytes: int
    source: str

    def __str__(self) -> str:
        return f"{self.bytes / 1e9:.2f} GB ({self.source})"


def job_memory(env: Mapping[str, str] | None = None, cgroup_root: Path | None = None) -> MemoryLimit:
    """The smallest memory limit that applies to this process (see the module docstring);
    env defaults to os.environ, cgroup_root to CGROUP_ROOT."""
    env = os.environ if env is None else env
    root = CGROUP_ROOT if cgroup_root is None else cgroup_root
    limits = [physical_memory(), *cgroup_limits(root), *slurm_limits(env)]
    return min(limits, key=lambda limit: limit.bytes)


def physical_memory() -> MemoryLimit:
    """The machine's physical memory."""
    return MemoryLimit(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory")


def cgroup_limits(root: Path) -> list[MemoryLimit]:
    """Memory limits of this process's cgroup (v2: memory.max; v1: memory.limit_in_bytes),
    looked up under the process's own cgroup path and at the mount's root."""
    found = []
    for relative in _cgroup_files():
        path = root / relative
        text = path.read_text().strip() if path.is_file() else ""
        if text.isdigit() and int(text) < _UNLIMITED:
            found.append(MemoryLimit(int(text), f"cgroup {path}"))
    return found


def slurm_limits(env: Mapping[str, str]) -> list[MemoryLimit]:
    """SLURM's allocation: SLURM_MEM_PER_NODE, or SLURM_MEM_PER_CPU times the job's CPUs
    (SLURM_CPUS_PER_TASK, else SLURM_CPUS_ON_NODE, else 1). SLURM gives megabytes."""
    found = []
    if (per_node := env.get("SLURM_MEM_PER_NODE", "")).isdigit() and int(per_node) > 0:
        found.append(MemoryLimit(int(per_node) * 2**20, "SLURM_MEM_PER_NODE"))
    if (per_cpu := env.get("SLURM_MEM_PER_CPU", "")).isdigit() and int(per_cpu) > 0:
        name = next((k for k in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE") if env.get(k, "").isdigit()), None)
        cpus = int(env[name]) if name else 1
        found.append(MemoryLimit(int(per_cpu) * cpus * 2**20, f"SLURM_MEM_PER_CPU x {name or '1 CPU'}"))
    return found


def _cgroup_files() -> list[str]:
    """Paths, relative to the cgroup mount, of the memory limit files that may apply here."""
    own_v2, own_v1 = "", ""
    cgroup = Path("/proc/self/cgroup")
    for line in cgroup.read_text().splitlines() if cgroup.is_file() else []:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            own_v2 = path.lstrip("/")
        elif "memory" in controllers.split(","):
            own_v1 = path.lstrip("/")
    candidates = [
        f"{own_v2}/memory.max",
        "memory.max",
        f"memory/{own_v1}/memory.limit_in_bytes",
        "memory/memory.limit_in_bytes",
    ]
    return list(dict.fromkeys(path.replace("//", "/").lstrip("/") for path in candidates))


def resident_bytes() -> int:
    """This process's resident memory now (/proc/self/statm), or its peak so far where that
    file does not exist."""
    statm = Path("/proc/self/statm")
    if statm.is_file():
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def arrays_budget(limit: MemoryLimit, resident: int) -> MemoryLimit:
    """What the fit's arrays may use under `limit`: the limit less `resident` (the process's
    own memory, measured when the fit plans) and RESERVE_MARGIN; of physical memory, which
    other processes share, at most half. Refused when nothing is left."""
    free = limit.bytes - resident - RESERVE_MARGIN
    if free <= 0:
        raise ValueError(f"the job's memory limit {limit} leaves nothing for the fit's arrays: the process already "
                         f"holds {resident / 1e9:.2f} GB and {RESERVE_MARGIN / 1e9:.2f} GB are kept as a margin; "
                         "run the fit with more memory")
    if limit.source == "physical memory" and free > limit.bytes // 2:
        return MemoryLimit(limit.bytes // 2, f"half of {limit}")
    return MemoryLimit(free, f"{limit} less {resident / 1e9:.2f} GB resident and a "
                             f"{RESERVE_MARGIN / 1e9:.2f} GB margin")

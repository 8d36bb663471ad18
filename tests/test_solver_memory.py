"""The memory budget is the job's: the smallest of cgroup limit, SLURM allocation and physical
memory, each reported with where it came from."""

import json
import os
import subprocess
import sys

import pytest

from coar.solver import estimators, memory
from coar.solver.estimators import plan_fit

GB = 10**9


@pytest.fixture
def roomy_machine(monkeypatch):
    monkeypatch.setattr(memory, "physical_memory", lambda: memory.MemoryLimit(256 * GB, "physical memory"))


def test_without_limits_the_budget_is_physical_memory(tmp_path, roomy_machine):
    assert memory.job_memory({}, tmp_path) == memory.MemoryLimit(256 * GB, "physical memory")


def test_cgroup_v2_limit_is_used_and_max_means_none(tmp_path, roomy_machine):
    (tmp_path / "memory.max").write_text("8000000000\n")
    found = memory.job_memory({}, tmp_path)
    assert found.bytes == 8 * GB and "memory.max" in found.source
    (tmp_path / "memory.max").write_text("max\n")
    assert memory.job_memory({}, tmp_path).source == "physical memory"


def test_cgroup_v1_limit_is_used_and_its_huge_no_limit_value_ignored(tmp_path, roomy_machine):
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("6000000000\n")
    found = memory.job_memory({}, tmp_path)
    assert found.bytes == 6 * GB and "memory.limit_in_bytes" in found.source
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert memory.job_memory({}, tmp_path).source == "physical memory"


def test_slurm_memory_per_node_in_megabytes(tmp_path, roomy_machine):
    found = memory.job_memory({"SLURM_MEM_PER_NODE": "16000"}, tmp_path)
    assert found == memory.MemoryLimit(16000 * 2**20, "SLURM_MEM_PER_NODE")


def test_slurm_memory_per_cpu_times_cpus_per_task_before_cpus_on_node(tmp_path, roomy_machine):
    env = {"SLURM_MEM_PER_CPU": "2000", "SLURM_CPUS_PER_TASK": "4", "SLURM_CPUS_ON_NODE": "64"}
    found = memory.job_memory(env, tmp_path)
    assert found == memory.MemoryLimit(8000 * 2**20, "SLURM_MEM_PER_CPU x SLURM_CPUS_PER_TASK")
    del env["SLURM_CPUS_PER_TASK"]
    assert memory.job_memory(env, tmp_path).bytes == 2000 * 64 * 2**20


def test_the_smallest_limit_wins(tmp_path, roomy_machine):
    (tmp_path / "memory.max").write_text(str(20 * GB))
    found = memory.job_memory({"SLURM_MEM_PER_NODE": "10000"}, tmp_path)
    assert found.source == "SLURM_MEM_PER_NODE"
    found = memory.job_memory({"SLURM_MEM_PER_NODE": "100000"}, tmp_path)
    assert "memory.max" in found.source


def test_auto_plan_sizes_the_fit_from_the_slurm_allocation_not_the_node(monkeypatch, tmp_path, roomy_machine):
    monkeypatch.setattr(memory, "CGROUP_ROOT", tmp_path)
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "4000")  # 4000 MiB of a 256 GB node
    monkeypatch.delenv("SLURM_MEM_PER_CPU", raising=False)
    monkeypatch.setattr(estimators, "resident_bytes", lambda: 600 * 2**20)  # Python, torch and friends
    plan = plan_fit(15_000, 50_000, "ols", backend="numpy")
    assert plan.budget.bytes == (4000 - 600) * 2**20 - memory.RESERVE_MARGIN and "SLURM_MEM_PER_NODE" in plan.budget.source
    assert not plan.closed_form  # the 1.8 GB Gram matrix and its update do not fit in 3.3 GB
    assert "iterative" in str(plan) and "SLURM_MEM_PER_NODE" in str(plan)
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "40000")
    plan = plan_fit(15_000, 50_000, "ols", backend="numpy")
    assert plan.closed_form and 1 < plan.n_blocks and plan.peak_bytes <= plan.budget.bytes


def test_auto_plan_keeps_half_of_physical_memory_for_others(tmp_path, monkeypatch, roomy_machine):
    monkeypatch.setattr(memory, "CGROUP_ROOT", tmp_path)
    for name in ("SLURM_MEM_PER_NODE", "SLURM_MEM_PER_CPU"):
        monkeypatch.delenv(name, raising=False)
    plan = plan_fit(1000, 100, "ols", backend="numpy")
    assert plan.budget.bytes == 128 * GB and "physical memory" in plan.budget.source


@pytest.fixture
def slurm_only(monkeypatch, tmp_path):
    """No cgroup limit and no per-CPU allocation: SLURM_MEM_PER_NODE (set by the test) is the limit."""
    monkeypatch.setattr(memory, "CGROUP_ROOT", tmp_path)
    monkeypatch.delenv("SLURM_MEM_PER_CPU", raising=False)


@pytest.mark.parametrize("mib", [2048, 4096, 12288])
def test_auto_plan_fits_its_arrays_beside_the_process_own_resident_memory_within_the_allocation(
        monkeypatch, slurm_only, roomy_machine, mib):
    resident = 900 * 2**20  # what this process holds depends on the tests run before: fixed here; the
    monkeypatch.setattr(estimators, "resident_bytes", lambda: resident)  # next test measures a real child
    monkeypatch.setenv("SLURM_MEM_PER_NODE", str(mib))
    plan = plan_fit(8_000, 2_000, "ols", backend="numpy")
    assert plan.peak_bytes + resident + memory.RESERVE_MARGIN <= mib * 2**20
    assert "resident" in str(plan) and "SLURM_MEM_PER_NODE" in str(plan)


def test_auto_plan_refuses_an_allocation_the_process_already_fills(monkeypatch, slurm_only, roomy_machine):
    monkeypatch.setenv("SLURM_MEM_PER_NODE", str(memory.resident_bytes() // 2**20))
    with pytest.raises(ValueError, match=r"SLURM_MEM_PER_NODE\) leaves nothing for the fit's arrays: the process "
                                         r"already holds .* GB"):
        plan_fit(100, 10, "ols", backend="numpy")


FIT_IN_A_CHILD = """
import json, resource, sys
import numpy as np
from coar.solver import fit, plan_fit, memory
m, N, n = 4400, 4000, 3000
rng = np.random.default_rng(0)
X = rng.random((m, N)) < 0.1
Y = (X @ rng.standard_normal((N, n))).astype(np.float32)
plan = plan_fit(N, n, "ols", backend="numpy")
fit((X, Y), "ols", backend="numpy", plan=plan)
print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "budget": plan.budget.bytes, "estimate": plan.peak_bytes, "blocks": plan.n_blocks}))
"""


@pytest.mark.slow
def test_a_fit_planned_for_a_2_gb_allocation_peaks_below_it():
    limit = 2048 * 2**20
    env = {**os.environ, "SLURM_MEM_PER_NODE": "2048", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env.pop("SLURM_MEM_PER_CPU", None)
    child = subprocess.run([sys.executable, "-c", FIT_IN_A_CHILD], env=env, capture_output=True, text=True)
    assert child.returncode == 0, child.stderr[-2000:]
    found = json.loads(child.stdout.splitlines()[-1])
    assert found["estimate"] <= found["budget"] < limit
    assert found["peak_rss"] <= limit, found

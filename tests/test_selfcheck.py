"""`coar selfcheck`: passes on a healthy install, fails (exit code 1) when the mask op is wrong."""

import os
import subprocess
import sys

import pytest
import torch

from coar import cli, ops, selfcheck


@pytest.mark.slow
def test_quick_cpu_selfcheck_passes_and_prints_the_throughput_table():
    result = subprocess.run([sys.executable, "-m", "coar.cli", "selfcheck", "--device", "cpu", "--quick"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "FAIL" not in out
    assert "ok   op vs reference on cpu: 40 cases" in out
    assert "ok   run_masked resnet18 32x32 fp32" in out and "ok   run_masked GPT-2 2 layers bf16" in out
    assert "skip cupy solver vs numpy" in out or "ok   cupy solver vs numpy" in out
    assert "coar16/published" in out and "resnet50" not in out  # --quick leaves resnet50 out
    assert "all checks passed" in out


def test_selfcheck_fails_when_the_op_skips_a_unit(monkeypatch, capsys):
    original = ops.apply_masks_

    def skips_unit_0(x, mask, fill, dim=1):
        mask = mask.clone()
        mask[:, 0] = False
        return original(x, mask, fill, dim)

    monkeypatch.setattr(ops, "apply_masks_", skips_unit_0)
    assert selfcheck.selfcheck("cpu", quick=True) is False
    out = capsys.readouterr().out
    assert "FAIL op vs reference on cpu" in out and "throughput not measured" in out
    assert cli.main(["selfcheck", "--device", "cpu", "--quick"]) == 1


def test_selfcheck_does_not_need_a_run_dir():
    args = cli._parser().parse_args(["selfcheck", "--device", "cpu"])
    assert args.command == "selfcheck" and not hasattr(args, "run_dir")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_selfcheck_without_a_gpu_is_an_error_naming_the_cause(capsys):
    assert cli.main(["selfcheck", "--device", "cuda"]) == 1
    assert "torch sees no GPU" in capsys.readouterr().err

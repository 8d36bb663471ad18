"""benchmarks/edit_set_bias.py: an applied edit's realised / predicted change for its chosen set,
as its report gives it, beside random sets of the same size ablated for real."""

import numpy as np

from coar.cli import main as coar_main
from coar.edit import steps as edit_steps
from coar.edit.spec import EditSpec
from tests.benchmark_scripts import load_benchmark
from tests.test_edit_steps import EDIT, TASK, attributed_run


def test_the_chosen_sets_ratio_is_the_reports_and_random_sets_are_ablated_for_real(tmp_path):
    run = attributed_run(tmp_path / "run")
    assert coar_main(["fit-surrogate", "--run-dir", str(run), "--data", str(run / "dataset.h5"), "--attributions",
                      str(run / "attributions.h5"), "--out", str(run / "surrogate.h5"), "--kind",
                      "projected_quadratic", "--rank", "2"]) == 0
    spec = EditSpec.from_config({**EDIT, "k": 3})  # verified: the plan ranks all 11 candidates
    out = run / "edits" / spec.name
    edit_steps.plan(run, spec, run / "attributions.h5", out / "plan.json", task=TASK)
    report = edit_steps.apply(run, spec, out / "plan.json", run / "attributions.h5", out, task=TASK,
                              surrogate=run / "surrogate.h5")
    measured = load_benchmark("edit_set_bias").measure(run, spec.name, pool=8, sets=4, task=TASK)
    pairs = report["predicted_vs_realised"]
    assert set(measured) == {"linear", "surrogate"} and measured["linear"]["k"] == report["k"] > 0
    np.testing.assert_allclose(measured["linear"]["chosen"], pairs["realised_over_predicted"]["target"], rtol=1e-5)
    np.testing.assert_allclose(measured["surrogate"]["chosen"], pairs["surrogate_realised_over_predicted"]["target"],
                               rtol=1e-5)
    assert all(len(m["random"]) == 4 and np.all(np.isfinite(m["random"])) for m in measured.values())
    assert len(set(measured["linear"]["random"])) > 1  # different sets, different ratios

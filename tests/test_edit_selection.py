"""How an edit chooses its components: each candidate verified on validation before it joins
(skipped, not stopped at, when it breaks the reference), the published prefix kept as the
reference method, one edit per target example, and an edit's files trusted through their digests."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from coar.edit import steps as edit_steps
from coar.edit.record import read_report
from coar.edit.selection import Predictions, prefix_path, verified_path
from coar.edit.spec import EditSpec
from coar.forward import run_masked
from coar.h5format import FormatError
from coar.outputs import resolve_output_fn
from coar.run import Run
from tests.test_edit_steps import EDIT, TASK, attributed_run

# A linear toy "model": 4 target and 6 reference examples, 5 components. Component 0 moves the
# target most but drives every reference output below zero; 1, 2 and 3 move the target less and
# spare the reference; 4 moves nothing.
EFFECTS = np.zeros((10, 5))
EFFECTS[:4, 0], EFFECTS[4:, 0] = -3.0, -5.0
EFFECTS[:4, 1:4] = -1.0
BASE = np.full(10, 2.0)
TARGET, REFERENCE = np.arange(4), np.arange(4, 10)
ORDER = np.array([0, 1, 2, 3, 4])


def evaluate(masks: np.ndarray) -> np.ndarray:
    return BASE + masks.astype(float) @ EFFECTS.T


def test_the_prefix_takes_the_ranking_as_it_comes():
    path = prefix_path(ORDER, 3, 5, evaluate)
    assert path.order == [0, 1, 2] and path.ks == [0, 1, 2, 3]
    np.testing.assert_array_equal(path.outputs[1], evaluate(np.eye(5, dtype=bool)[[0]])[0])


def test_a_candidate_that_breaks_the_reference_is_skipped_and_the_next_ones_are_tried():
    path = verified_path(ORDER, 5, evaluate, target=TARGET, reference=REFERENCE, sign=-1.0, tolerance=0.1, k_max=3)
    assert path.order == [1, 2, 3]
    skipped = path.tried[0]
    assert skipped.index == 0 and not skipped.accepted and "reference accuracy would fall to 0.000" in skipped.reason
    assert all(t.accepted for t in path.tried[1:])
    # every row is the model with the first k of the path ablated
    for k in path.ks:
        mask = np.zeros((1, 5), bool)
        mask[0, path.order[:k]] = True
        np.testing.assert_array_equal(path.outputs[k], evaluate(mask)[0])


def test_a_refused_candidate_is_looked_at_once_more_when_the_ranking_is_done():
    # Component 5 lifts the reference by 4 (and lowers the target a little): with it ablated,
    # component 0 no longer breaks the reference, so the second look takes it.
    effects = np.c_[EFFECTS, np.r_[np.full(4, -0.5), np.full(6, 4.0)]]
    lifted = lambda masks: BASE + masks.astype(float) @ effects.T  # noqa: E731
    path = verified_path(np.array([0, 5]), 6, lifted, target=TARGET, reference=REFERENCE, sign=-1.0, tolerance=0.1,
                         k_max=3)
    assert path.order == [5, 0]
    assert [(t.index, t.accepted) for t in path.tried] == [(0, False), (5, True), (0, True)]
    assert path.tried[2].reason.startswith("second look: the validation target's mean output falls")
    # a candidate refused again on its second look is not looked at a third time
    path = verified_path(np.array([0, 4]), 5, evaluate, target=TARGET, reference=REFERENCE, sign=-1.0, tolerance=0.1,
                         k_max=3)
    assert path.order == [] and [t.index for t in path.tried] == [0, 4, 0, 4]
    assert all(t.reason.startswith("second look: ") for t in path.tried[2:])
    # with the attributions' predictions, 4 (predicted on its own not to move the target) is not looked at again
    path = verified_path(np.array([0, 4]), 5, evaluate, target=TARGET, reference=REFERENCE, sign=-1.0, tolerance=0.1,
                         k_max=3, predictions=Predictions(EFFECTS, BASE, TARGET, REFERENCE))
    assert [t.index for t in path.tried] == [0, 4, 0]


def test_a_candidate_that_does_not_move_the_target_is_not_taken():
    path = verified_path(np.array([4, 1]), 5, evaluate, target=TARGET, reference=REFERENCE, sign=-1.0, tolerance=0.1,
                         k_max=2)
    assert path.order == [1]
    assert "moves the wrong way" in path.tried[0].reason


def test_the_selection_stops_at_the_goal():
    # after 1 and 2 every target output is 0 (not yet below); the third one moves them all
    path = verified_path(ORDER, 5, evaluate, target=TARGET, reference=REFERENCE, sign=-1.0, tolerance=0.1, k_max=5,
                         goal=1.0)
    assert path.order == [1, 2, 3]


def test_the_attributions_rule_out_candidates_before_any_pass():
    calls = []

    def counted(masks: np.ndarray) -> np.ndarray:
        calls.append(masks.copy())
        return evaluate(masks)

    predictions = Predictions(EFFECTS, BASE, TARGET, REFERENCE)
    path = verified_path(ORDER, 5, counted, target=TARGET, reference=REFERENCE, sign=-1.0, tolerance=0.1, k_max=3,
                         predictions=predictions)
    assert path.order == [1, 2, 3]
    assert path.tried[0].reason.startswith("predicted reference accuracy 0.000")
    assert not any(mask[:, 0].any() for mask in calls)  # component 0 never ran


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return attributed_run(tmp_path_factory.mktemp("run"))


def applied(run, out, **changes) -> dict:
    spec = EditSpec.from_config({**EDIT, **changes})
    edit_steps.plan(run, spec, run / "attributions.h5", out / "plan.json", task=TASK)
    return edit_steps.apply(run, spec, out / "plan.json", run / "attributions.h5", out, task=TASK)


def test_the_verified_edit_keeps_the_reference_within_the_tolerance_on_validation(run, tmp_path):
    report = applied(run, tmp_path, tolerance=0.05, k_max=6)
    assert report["selection"] == "verified"
    losses = np.array(report["sweep"]["validation_reference_accuracy"])
    assert (losses[0] - losses <= 0.05 + 1e-12).all()
    assert report["checks"]["reference_accuracy_loss"] <= 0.05
    accepted = [t["index"] for t in report["tried"] if t["accepted"]]
    assert accepted[: report["k"]] == [r["index"] for r in json.loads((tmp_path / "ablated.json").read_text())["ablated"]]


def test_a_per_example_edit_edits_each_target_example_on_its_own_and_reports_them_together(run, tmp_path):
    report = applied(run, tmp_path, per_example=True, target={"label": 0}, k_max=6, tolerance=0.2)
    summary = report["per_example"]
    assert summary["n"] == 10 and len(summary["examples"]) == 10
    assert summary["fixed"] == sum(e["fixed"] for e in summary["examples"])
    assert not (tmp_path / "weights.safetensors").exists()  # each edited model is the run's with its set ablated
    sets = json.loads((tmp_path / "ablated.json").read_text())["per_example"]
    run_ = Run(run)
    prepared = run_.reopen(*TASK)
    inputs = torch.cat([x for x, _ in prepared.examples.batches(100)])
    labels = torch.cat([y for _, y in prepared.examples.batches(100)])
    margin = resolve_output_fn("margin")
    for edit in summary["examples"]:
        row = run_.example_ids.index(edit["id"])
        assert len(sets[edit["id"]]) == edit["k"]
        mask = np.zeros((1, len(run_.components)), bool)
        mask[0, [c["index"] for c in sets[edit["id"]]]] = True
        after = run_masked(prepared.model, run_.components, mask, inputs[row : row + 1], labels[row : row + 1], margin)
        assert after[0, 0] == pytest.approx(edit["output"][1], abs=1e-5)
        assert edit["fixed"] == (edit["output"][1] < 0)  # lower: moved below zero
        assert edit["reference_accuracy"][0] - edit["reference_accuracy"][1] <= 0.2 + 1e-12
    assert read_report(tmp_path, Run(run).fingerprints)["per_example"] == summary


def test_report_json_records_the_digests_of_the_edits_files_and_readers_check_them(run, tmp_path):
    report = applied(run, tmp_path, selection="prefix", k=2)
    assert set(report["files"]) == {"weights.safetensors", "ablated.json", "metric_vs_k.png"}
    assert read_report(tmp_path, Run(run).fingerprints)["k"] == 2
    weights = tmp_path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one flipped bit in the last weight
    weights.write_bytes(bytes(data))
    load_file(weights)  # still a valid safetensors file: only the digest tells
    with pytest.raises(FormatError, match="weights.safetensors is not the file report.json describes"):
        read_report(tmp_path)
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert read_report(tmp_path)["files"] == report["files"]
    with pytest.raises(FormatError, match="report.json was made with model_fingerprint .* but this run has 'another'"):
        read_report(tmp_path, {**Run(run).fingerprints, "model_fingerprint": "another"})


class LinearSurrogate:
    """A 'surrogate' that is exactly a linear model, plus an interaction the linear one misses:
    components 1 and 2 together drive the reference below zero."""

    def __init__(self, interaction: float = 0.0) -> None:
        self.interaction = interaction

    def predict(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=np.float64)
        both = (masks[:, 1] * masks[:, 2])[:, None] * np.r_[np.zeros(4), np.full(6, self.interaction)]
        return BASE + masks @ EFFECTS.T + both


def test_a_surrogate_that_is_the_linear_model_predicts_what_the_attributions_do():
    linear, surrogate = Predictions(EFFECTS, BASE, TARGET, REFERENCE), \
        Predictions(EFFECTS, BASE, TARGET, REFERENCE, LinearSurrogate())
    for component in range(5):
        assert surrogate.target_change(component, -1.0) == pytest.approx(linear.target_change(component, -1.0))
    for chosen in ([], [0], [1, 2], [1, 2, 3]):
        assert surrogate.reference_accuracy(chosen) == linear.reference_accuracy(chosen)


def test_a_surrogates_interaction_rules_out_a_set_the_linear_prediction_would_try():
    predictions = Predictions(EFFECTS, BASE, TARGET, REFERENCE, LinearSurrogate(interaction=-5.0))
    calls = []

    def counted(masks: np.ndarray) -> np.ndarray:
        calls.append(masks.copy())
        return evaluate(masks)

    path = verified_path(np.array([1, 2, 3]), 5, counted, target=TARGET, reference=REFERENCE, sign=-1.0,
                         tolerance=0.1, k_max=3, predictions=predictions)
    assert path.order == [1, 3]  # 2 with 1 is predicted to break the reference: never run
    assert path.tried[1].index == 2 and path.tried[1].reason.startswith("predicted reference accuracy 0.000")
    assert not any(row[1] and row[2] for masks in calls for row in masks)  # no pass ablated both


def test_with_the_runs_surrogate_the_report_shows_its_predictions_beside_the_linear_ones(run, tmp_path):
    from coar.cli import main

    assert main(["fit-surrogate", "--run-dir", str(run), "--data", str(run / "dataset.h5"), "--attributions",
                 str(run / "attributions.h5"), "--out", str(run / "surrogate.h5"), "--kind", "projected_quadratic",
                 "--rank", "2"]) == 0
    spec = EditSpec.from_config({**EDIT, "k": 3, "selection": "prefix"})
    edit_steps.plan(run, spec, run / "attributions.h5", tmp_path / "plan.json", task=TASK)
    report = edit_steps.apply(run, spec, tmp_path / "plan.json", run / "attributions.h5", tmp_path, task=TASK,
                              surrogate=run / "surrogate.h5")
    (run / "surrogate.h5").unlink()
    assert report["checks"]["predicted_by"] == "surrogate" and "linear_predicted_target_change" in report["checks"]
    assert len(report["sweep"]["surrogate_predicted_mean_change"]["target"]) == len(report["sweep"]["ks"])
    pairs = report["predicted_vs_realised"]
    assert set(pairs["surrogate_realised_over_predicted"]) == {"target", "reference"}
    assert all("surrogate_predicted" in e and "predicted" in e for e in pairs["examples"])
    assert set(pairs["accuracy"]["target"]) == {"before", "predicted", "surrogate_predicted", "realised"}

"""A user's own model, in a task module outside the repository, edited by config alone through
Snakemake: the edited weights load into the user's class without coar, and the realised change
the report shows is what ablating the listed components by hand gives."""

import copy
import importlib.util
import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.snakemake_runs import snakemake

pytestmark = pytest.mark.slow  # runs the workflow: left out of the quick loop (-m 'not slow')

USER_TASK = '''
"""A user's task: a small MLP on three Gaussian blobs, trained here, with validation examples."""
import torch
from torch import nn
from coar.task import Task, restoring


class BlobNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(2, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x)))


def blobs(n, generator):
    labels = torch.arange(n) % 3
    centres = torch.tensor([[0.0, 2.0], [2.0, -1.0], [-2.0, -1.0]])
    return centres[labels] + torch.randn(n, 2, generator=generator), labels


def task(params):
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = BlobNet()
    train_x, train_y = blobs(300, generator)
    if not restoring():
        optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(100):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(train_x), train_y).backward()
            optimiser.step()
    inputs, labels = blobs(60, generator)
    validation_x, validation_y = blobs(60, generator)
    return Task(model=model, inputs=inputs, labels=labels, validation_inputs=validation_x,
                validation_labels=validation_y)
'''

CONFIG = {
    "run": "mine",
    "task": {"spec": "usertask:task", "params": {}},
    "components": {"kinds": ["linear"], "include": ["*"], "exclude": []},
    "alpha": 0.2,
    "masks": 200,
    "shards": 1,
    "edits": [{"name": "forget_0", "target": {"label": 0}, "reference": {"rest": True}, "direction": "lower",
               "k_max": 8, "tolerance": 0.2}],
}


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Correct-class logit minus the largest other logit (by hand, not coar's)."""
    correct = logits.gather(1, labels[:, None])[:, 0]
    others = logits.masked_fill(torch.nn.functional.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return correct - others.max(1).values


@pytest.fixture(scope="module")
def edited_run(tmp_path_factory) -> tuple[Path, object]:
    work = tmp_path_factory.mktemp("user")
    (work / "code").mkdir()
    (work / "code" / "usertask.py").write_text(textwrap.dedent(USER_TASK))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(work / "code"), os.environ.get("PYTHONPATH", "")])}
    result = snakemake(work, "edits", config=CONFIG, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    spec = importlib.util.spec_from_file_location("usertask", work / "code" / "usertask.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return work / "results" / "mine", module


def test_the_edits_target_runs_plan_and_apply_after_the_fit_without_a_second_collection(edited_run):
    run, _ = edited_run
    assert sorted(p.name for p in (run / "edits" / "forget_0").iterdir()) == [
        "ablated.json", "metric_vs_k.png", "plan.json", "report.json", "weights.safetensors"]
    assert not (run / "heldout").exists() and not (run / "baselines").exists()


def test_the_edited_weights_load_into_the_users_class_and_equal_ablating_by_hand(edited_run):
    run, user = edited_run
    edited = user.BlobNet()
    edited.load_state_dict(load_file(run / "edits" / "forget_0" / "weights.safetensors"))
    original = user.BlobNet()
    original.load_state_dict(load_file(run / "weights.safetensors"))
    by_hand = copy.deepcopy(original)
    ablated = json.loads((run / "edits" / "forget_0" / "ablated.json").read_text())["ablated"]
    with torch.no_grad():
        for row in ablated:
            by_hand.get_submodule(row["module"]).weight[row["unit"]] = 0
    for name, tensor in edited.state_dict().items():
        assert torch.equal(tensor, by_hand.state_dict()[name]), name

    report = json.loads((run / "edits" / "forget_0" / "report.json").read_text())
    assert report["k"] == len(ablated) > 0
    arrays = load_file(run / "examples.safetensors")
    with torch.no_grad():
        change = margin(by_hand(arrays["inputs"]), arrays["labels"]) - margin(original(arrays["inputs"]), arrays["labels"])
    realised = [e["realised"] for e in report["predicted_vs_realised"]["examples"]]
    np.testing.assert_allclose(realised, change.numpy(), rtol=1e-5, atol=1e-5)

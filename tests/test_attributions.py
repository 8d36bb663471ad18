"""One type for per-example linear models (coar.attributions.LinearModels): the solver, the
baselines (tests/test_baselines.py) and the attributions file reader all return one, and its
prediction is the "1 = ablated" linear model every evaluation uses."""

import subprocess
import sys

import numpy as np

from coar import evaluate, h5format, solver
from coar.attributions import LinearModels
from tests.test_h5format import attribution_inputs


def test_predict_is_the_bias_plus_the_weights_of_the_ablated_components():
    models = LinearModels(weight=np.array([[1, 2, 4], [0, -1, 0]], dtype=np.float32),
                          bias=np.array([10, 20], dtype=np.float32))
    masks = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=bool)
    np.testing.assert_array_equal(models.predict(masks), [[15, 20], [10, 20], [12, 19]])
    np.testing.assert_array_equal(models.predict(masks), evaluate.predict(models.weight, models.bias, masks))


def test_the_solver_returns_linear_models_with_how_they_were_fit():
    rng = np.random.default_rng(0)
    masks = rng.random((60, 5)) < 0.3
    truth = LinearModels(rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=3).astype(np.float32))
    found = solver.fit((masks, truth.predict(masks)), "ols", backend="numpy")
    assert isinstance(found, LinearModels) and (found.method, found.n_masks) == ("ols", 60)
    np.testing.assert_allclose(found.weight, truth.weight, atol=1e-4)
    np.testing.assert_allclose(found.bias, truth.bias, atol=1e-4)


def test_the_file_reader_returns_the_written_linear_models_with_what_the_file_records(tmp_path):
    inputs = attribution_inputs()
    h5format.write_attributions(tmp_path / "a.h5", **inputs)
    read = h5format.read_attributions(tmp_path / "a.h5")
    assert isinstance(read, LinearModels)
    np.testing.assert_array_equal(read.weight, inputs["weight"])
    np.testing.assert_array_equal(read.bias, inputs["bias"])
    assert read.example_ids == inputs["example_ids"] and read.components == inputs["components"]


def test_the_type_and_the_file_reader_import_without_torch():
    code = "import sys, coar.attributions, coar.h5format; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"

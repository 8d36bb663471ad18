"""The one type of COAR's result: per-example linear models of the ablated output.

    f(z, mask) ~ weight[z] @ mask + bias[z],   mask = 1 where a component is ablated

so weight[z, i] is the predicted effect on example z's output of ablating component i. The
solver, the baselines (coar.baselines) and the attributions file reader all return a
`LinearModels`; the solver's `coar.solver.Fit` adds penalties and scores, the file reader's
`coar.h5format.AttributionsFile` components, example ids and the file's attributes, and the result
object users hold, `coar.Attributions` (coar.result), what every consumer reads results through.
Only numpy: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinearModels:
    """weight: (n examples, N components) float32; bias: (n,) float32, the predicted output with
    nothing ablated."""

    weight: np.ndarray
    bias: np.ndarray

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted outputs (m x n) of the ablated model for masks X (m x N, 1 = ablated)."""
        return np.asarray(X, dtype=np.float32) @ self.weight.T + self.bias

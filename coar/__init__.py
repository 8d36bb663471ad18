"""coar: component attribution via regression (COAR) and COAR-Edit.

Shah, Ilyas and Madry, "Decomposing and Editing Predictions by Modeling Model
Computation" (ICML 2024). The package is the library every workflow rule calls.

    import coar
    result = coar.attribute(model, dataset, components="conv", masks=2000)   # in one process
    result = coar.open("results/digits")                                     # a workflow run
    print(result.top(0, k=10))

`attribute`, `open` and `Attributions` are imported on first use, so `import coar` stays light.
"""

__version__ = "0.1.0"

_EXPORTS = {"attribute": ("coar.api", "attribute"), "open": ("coar.result", "open_run"),
            "Attributions": ("coar.result", "Attributions")}
__all__ = ["attribute", "Attributions", "__version__"]  # not `open`: a star import would hide the builtin


def __getattr__(name: str):
    """Lazy exports (PEP 562): importing torch and the solver only when asked for."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'coar' has no attribute {name!r}")
    import importlib

    module, attr = _EXPORTS[name]
    return getattr(importlib.import_module(module), attr)

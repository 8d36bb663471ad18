"""COAR-Edit: edit a model by ablating the few components its attributions single out.

- `coar.edit.spec`, `coar.edit.selectors`, `coar.edit.steps`: edits of a run's own model
  declared in config `edits` (the workflow's edit_plan and edit_apply rules);
- `coar.edit.planning`: score and rank components, choose k from validation metrics, apply an
  edit (its public names are re-exported here: `coar.edit.welch_scores`, `apply_edit`, ...);
- `coar.edit.plots`: the metric-vs-k figure.

The five editing demos are tasks (coar.tasks.demos, coar.tasks.digits) with a config each
(config/edit-demos/), edited by the same steps.

The re-exports load coar.edit.planning (and torch) when first used, so the start-up check of
config `edits` (coar.edit.spec) stays light.
"""

from importlib import import_module

__all__ = ["DIRECTIONS", "Choice", "Direction", "apply_edit", "by_layer", "choose_k", "describe", "prefix_masks",
           "rank", "welch_scores"]


def __getattr__(name: str) -> object:
    if name in __all__:
        return getattr(import_module("coar.edit.planning"), name)
    raise AttributeError(f"module 'coar.edit' has no attribute {name!r}")

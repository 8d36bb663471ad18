"""COAR-Edit: edit a model by ablating the few components its attributions single out.

- `coar.edit.spec`, `coar.edit.selectors`, `coar.edit.steps`: edits of a run's own model
  declared in config `edits` (the workflow's edit_plan and edit_apply rules);
- `coar.edit.planning`: score, rank, sweep k on validation data, choose k, apply and save an edit
  (its public names are re-exported here: `coar.edit.plan_edit`, `apply_edit`, `save_edit`, ...);
- `coar.edit.tasks`: the five editing demos on offline digits, one seed or several;
- `coar.edit.plots`: their figures.

The re-exports load coar.edit.planning (and torch) when first used, so the start-up check of
config `edits` (coar.edit.spec) stays light.
"""

from importlib import import_module

__all__ = ["DIRECTIONS", "Choice", "Direction", "EditPlan", "Metrics", "apply_edit", "by_layer", "choose_k",
           "describe", "load_ablated", "plan_edit", "prefix_masks", "rank", "save_edit", "welch_scores"]


def __getattr__(name: str) -> object:
    if name in __all__:
        return getattr(import_module("coar.edit.planning"), name)
    raise AttributeError(f"module 'coar.edit' has no attribute {name!r}")

"""COAR-Edit: edit a model by ablating the few components its attributions single out.

- `coar.edit.spec`, `coar.edit.selectors`, `coar.edit.steps`: edits of a run's own model
  declared in config `edits` (the workflow's edit_plan and edit_apply rules);
- `coar.edit.planning`: score and rank components, choose k from validation metrics, apply an
  edit (its public names are re-exported here: `coar.edit.welch_scores`, `apply_edit`, ...);
- `coar.edit.selection`: walk the ranking on validation examples: the published prefix, or each
  candidate verified before it joins (`prefix_masks`, `prefix_path`, `verified_path` re-exported);
- `coar.edit.record`: what an edit's folder holds, and `read_report`, which checks its digests;
- `coar.edit.plots`: the metric-vs-k and per-example figures.

The five editing demos are tasks (coar.tasks.demos, coar.tasks.digits) with a config each
(config/edit-demos/), edited by the same steps.

The re-exports load coar.edit.planning (and torch) when first used, so the start-up check of
config `edits` (coar.edit.spec) stays light.
"""

from importlib import import_module

_HOMES = {**dict.fromkeys(["DIRECTIONS", "Choice", "Direction", "apply_edit", "by_layer", "choose_k", "describe",
                            "rank", "welch_scores"], "coar.edit.planning"),
          **dict.fromkeys(["prefix_masks", "prefix_path", "verified_path"], "coar.edit.selection")}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> object:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'coar.edit' has no attribute {name!r}")

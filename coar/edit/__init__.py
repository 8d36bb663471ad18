"""COAR-Edit: edit a model by ablating the few components its attributions single out.

- `coar.edit.planning`: score, rank, sweep k on validation data, choose k, apply and save an edit
  (its public names are re-exported here: `coar.edit.plan_edit`, `apply_edit`, `save_edit`, ...);
- `coar.edit.tasks`: the five editing tasks on offline digits, one seed or several;
- `coar.edit.plots`: their figures.
"""

from coar.edit.planning import (DIRECTIONS, Choice, Direction, EditPlan, Metrics, apply_edit, by_layer, choose_k,
                                describe, load_ablated, plan_edit, prefix_masks, rank, save_edit, welch_scores)

__all__ = ["DIRECTIONS", "Choice", "Direction", "EditPlan", "Metrics", "apply_edit", "by_layer", "choose_k",
           "describe", "load_ablated", "plan_edit", "prefix_masks", "rank", "save_edit", "welch_scores"]

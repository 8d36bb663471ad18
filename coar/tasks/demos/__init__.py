"""The five COAR-Edit demos as ordinary tasks, each edited by the workflow's `edits` rules.

`coar.tasks.digits` serves two of them as it is (forget a class; fix errors, trained for fewer
epochs). `backdoor`, `subpopulation` and `typographic` train a digits model on images carrying
a mark (a trigger, a background band, a rendered glyph) and give the groups their edit selects,
among the attributed test digits and the validation digits alike. Their configs are
config/edit-demos/<task>.yaml; benchmarks/edit_demos.py runs them over seeds (docs/results.md).
"""

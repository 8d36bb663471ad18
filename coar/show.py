"""`coar show` and `coar export`: a finished run's attributions, read through `coar.open`.

`show --example` prints the components with the largest predicted effects on one example;
with `verify` each is also ablated for real (the published procedure, on a copy of the run's
model) and the realised change of the example's output is printed beside the prediction, then
the same for all of them ablated together. Reopening the model runs the task's code: the
user names the task (`task`), or the run's own is used when it is shipped with coar
(`coar.run.Run.named_task`). `show --component` prints the examples the
component raises most and lowers most. `show --edit` prints what an applied edit ablated and
what it did, its files checked against the digests its report records.
"""

from __future__ import annotations

import json
from pathlib import Path

from coar.result import Attributions, open_run


def show(run_dir: str | Path, example: str | None = None, component: str | None = None, top: int = 10,
         verify: bool = False, task: tuple[str, dict] | None = None) -> str:
    """The text `coar show` prints for one example (by id, or "#N" for position N) or one component."""
    result = open_run(run_dir)
    if component is not None:
        if verify:
            raise ValueError("--verify applies to --example (it ablates that example's listed components)")
        raises, lowers = result.moved_most(component, top)
        return (f"examples whose output ablating {component} raises most:\n{raises}\n\n"
                f"examples whose output ablating {component} lowers most:\n{lowers}")
    if example is None:
        raise ValueError("give --example or --component")
    key: str | int = int(example[1:]) if example.startswith("#") and example[1:].isdigit() else example
    rows = result.top(key, max(1, top))
    head = (f"example {rows[0].example}: output with nothing ablated predicted {result.bias[result.example_index(key)]:+.4g}; "
            f"largest predicted changes when one component is ablated ({result.info.get('output_fn')}):")
    if not verify:
        return f"{head}\n{rows}"
    realised, together = realised_changes(run_dir, result, result.example_index(key), [r.component for r in rows],
                                          task)
    lines = str(rows).splitlines()
    width = max(len(line) for line in lines)
    out = [lines[0].ljust(width) + "  realised"] + [line.ljust(width) + f"  {v:+.4g}" for line, v in zip(lines[1:], realised)]
    predicted = sum(r.predicted for r in rows)
    return (f"{head}\n" + "\n".join(out) +
            f"\nall {len(rows)} ablated together: predicted {predicted:+.4g}, realised {together:+.4g}")


def _predicted(accuracy: dict | None) -> str:
    """" (predicted 12.0%[, surrogate 20.0%])": the accuracy the attributions (and the surrogate)
    predicted for the edit, on the run's examples; "" for a report without it."""
    if accuracy is None:
        return ""
    surrogate = accuracy.get("surrogate_predicted")
    return (f" (predicted {100 * accuracy['predicted']:.1f}%"
            + ("" if surrogate is None else f", by the surrogate {100 * surrogate:.1f}%") + ")")


def show_edit(run_dir: str | Path, name: str) -> str:
    """The text `coar show --edit` prints: the rule and k, accuracies before -> after, the ablated components."""
    result = open_run(run_dir)
    report = result.edit(name)
    edit = report["edit"]
    head = (f"edit {name}: {edit['direction']} the output of {edit['target']} keeping {edit['reference']} within "
            f"{edit['tolerance']:g} ({report['selection']} selection)")
    if report.get("per_example"):
        summary = report["per_example"]
        rows = [f"  {e['id']:>12}  k = {e['k']:>3}  output {e['output'][0]:+.3f} -> {e['output'][1]:+.3f}  "
                f"{'moved' if e['fixed'] else 'not moved'}; validation reference accuracy "
                f"{100 * e['reference_accuracy'][0]:.1f}% -> {100 * e['reference_accuracy'][1]:.1f}%"
                for e in summary["examples"]]
        return (f"{head}\neach target example edited on its own: {summary['fixed']} of {summary['n']} moved; median "
                f"reference accuracy loss {100 * summary['median_reference_loss']:.2f} points on validation, "
                f"{100 * summary['median_test_reference_loss']:.2f} on the run's examples\n" + "\n".join(rows))
    lines = [head, f"k = {report['k']} ({report['rule']}); checks {'passed' if report['checks']['passed'] else 'FAILED'}"]
    lines += [f"  problem: {p}" for p in report["problems"]]
    for key, label in (("target", "target (run's examples)"), ("reference", "reference (run's examples)"),
                       ("validation_target", "target (validation)"), ("validation_reference", "reference (validation)")):
        m = report["metrics"][key]
        before, after = (float("nan") if v is None else 100 * v for v in m["accuracy"])
        predicted = report["predicted_vs_realised"].get("accuracy", {}).get(key)  # the run's examples only
        lines.append(f"  {label:<28} n = {m['n']:>5}  accuracy {before:5.1f}% -> {after:5.1f}%" + _predicted(predicted))
    checks = report["checks"]
    by = checks.get("predicted_by", "linear")
    linear = "" if by == "linear" else f" (linear {checks['linear_predicted_target_change']:+.3f})"
    lines.append(f"  target change on validation: predicted by the {'attributions' if by == 'linear' else by} "
                 f"{checks['predicted_target_change']:+.3f}{linear}, realised {checks['realised_target_change']:+.3f}")
    ablated = json.loads((Path(run_dir) / "edits" / name / "ablated.json").read_text(encoding="utf-8"))["ablated"]
    names = [result.components[a["index"]].name for a in ablated]
    lines.append(f"ablated ({len(names)}): " + ", ".join(names))
    return "\n".join(lines)


def realised_changes(run_dir: str | Path, result: Attributions, z: int, components: list[str],
                     task: tuple[str, dict] | None = None) -> tuple[list[float], float]:
    """Change of example z's output when each of `components` is ablated for real (one at a
    time), and when all are ablated together, on the run's model reopened from its folder
    (`task`: spec and params; None: the run's own, if shipped with coar)."""
    import torch

    from coar.outputs import resolve_output_fn
    from coar.run import Run

    run = Run(run_dir)
    task = run.reopen(*run.named_task(*(task or (None, None))))
    x = y = None
    seen = 0
    for inputs, labels in task.examples.batches(256):  # a full pass, so the examples' fingerprint is checked
        if seen <= z < seen + len(inputs):
            x, y = inputs[z - seen : z - seen + 1], labels[z - seen : z - seen + 1]
        seen += len(inputs)
    output_fn = resolve_output_fn(result.info["output_fn"])
    model = task.model.eval()

    def change(names: list[str]) -> float:
        edited = result.ablate(model, names, reference_inputs=task.reference_inputs)
        with torch.inference_mode():
            return float(output_fn(edited(x), y) - output_fn(model(x), y))

    return [change([c]) for c in components], change(components)


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None) -> str:
    """Write the run's attributions as `fmt` (coar.export) to `out` (default RUN/attributions.<fmt>)."""
    from coar.export import export

    path = export(open_run(run_dir), out or Path(run_dir) / f"attributions.{fmt}", fmt)
    return f"wrote {path}"

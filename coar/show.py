"""`coar show` and `coar export`: a finished run's attributions, read through `coar.open`.

`show --example` prints the components with the largest predicted effects on one example;
with `verify` each is also ablated for real (the published procedure, on a copy of the run's
model) and the realised change of the example's output is printed beside the prediction, then
the same for all of them ablated together. Reopening the model runs the task's code: the
user names the task (`task`), or the run's own is used when it is shipped with coar
(`coar.run.Run.named_task`). `show --component` prints the examples the
component raises most and lowers most.
"""

from __future__ import annotations

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

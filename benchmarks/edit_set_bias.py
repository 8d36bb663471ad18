"""Is an edit's predicted effect biased by the choosing? Realised / predicted for the chosen set
against random sets of the same size.

An edit's set is chosen because its predicted effect is large, so its prediction may run ahead of
what it realises even where the predictor is unbiased on sets it did not choose. For one applied
edit of a finished run (RUN/edits/NAME/), this ablates for real (coar.open(RUN).ablate, the run's
model reopened) the chosen set and --sets random sets of the same size drawn from the top --pool
of the edit's ranking, and prints the realised over predicted mean change of the target's
attributed outputs, by the linear attributions and by the run's surrogate (when it has one):
the chosen set's, and the random sets' median and interquartile range.

    python benchmarks/edit_set_bias.py results/backdoor_s1 backdoor
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import coar
from coar.outputs import resolve_output_fn
from coar.run import Run


def measure(run_dir: Path, edit: str, pool: int = 60, sets: int = 30, seed: int = 0,
            task: tuple[str, dict] | None = None) -> dict[str, dict]:
    """{"linear"|"surrogate": {"chosen": ratio, "random": [ratio per random set], "k": k}} for one
    applied edit: realised over predicted mean change of its target's attributed outputs, on the
    run's model reopened (`task`: spec and params; None: the run's own, if shipped with coar)."""
    folder = run_dir / "edits" / edit
    result, run = coar.open(run_dir), Run(run_dir)
    result.edit(edit)  # the edit's files checked against report.json's digests
    plan = json.loads((folder / "plan.json").read_text())
    chosen = [a["index"] for a in json.loads((folder / "ablated.json").read_text())["ablated"]]
    reopened = run.reopen(*run.named_task(*(task or (None, None))))
    batches = list(reopened.examples.batches(4096))
    inputs, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    ids = list(result.example_ids)
    target = np.array([ids.index(i) for i in plan["target"]["ids"]])
    output_fn, model = resolve_output_fn(result.info["output_fn"]), reopened.model.eval()
    with torch.inference_mode():
        base = output_fn(model(inputs), labels).numpy()
    weight, surrogate = np.asarray(result.weight, np.float64), result.surrogate
    n = weight.shape[1]
    nothing = None if surrogate is None else surrogate.predict(np.zeros((1, n)))[0]

    def ratios(components: list[int]) -> dict[str, float]:
        edited = result.ablate(model, components, reference_inputs=reopened.reference_inputs)
        with torch.inference_mode():
            realised = float((output_fn(edited(inputs), labels).numpy() - base)[target].mean())
        mask = np.zeros((1, n))
        mask[0, components] = 1
        out = {"linear": realised / float(weight[target][:, components].sum(1).mean())}
        if surrogate is not None:
            out["surrogate"] = realised / float((surrogate.predict(mask)[0] - nothing)[target].mean())
        return out

    rng = np.random.default_rng(seed)
    top = [r["index"] for r in plan["ranked"]][:pool]
    drawn = [ratios([int(i) for i in rng.choice(top, len(chosen), replace=False)]) for _ in range(sets)]
    return {name: {"chosen": value, "random": [d[name] for d in drawn], "k": len(chosen)}
            for name, value in ratios(chosen).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder with an applied edit")
    parser.add_argument("edit", help="the edit's name (RUN/edits/NAME/)")
    parser.add_argument("--pool", type=int, default=60, help="random sets are drawn from this many top-ranked candidates")
    parser.add_argument("--sets", type=int, default=30, help="how many random sets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", help="the run's task spec, for a task not shipped with coar (its code runs)")
    parser.add_argument("--task-params", type=json.loads, default={}, help="the task's params as JSON")
    args = parser.parse_args()
    task = (args.task, args.task_params) if args.task else None
    measured = measure(args.run, args.edit, args.pool, args.sets, args.seed, task)
    k = next(iter(measured.values()))["k"]
    print(f"{args.run.name} / {args.edit}: k = {k}; realised / predicted mean target change")
    for name, m in measured.items():
        low, median, high = np.percentile(m["random"], [25, 50, 75])
        print(f"  {name:9s} chosen set {m['chosen']:.3f}; {args.sets} random {k}-sets of the top {args.pool}: "
              f"median {median:.3f} (IQR {low:.3f}-{high:.3f})")


if __name__ == "__main__":
    main()

report: "../report/workflow.rst"


import shlex

HELDOUT_OPTIONS = " ".join(f"--heldout {shlex.quote(f'{a}={RUN}/heldout/alpha-{a}.h5')}" for a in ALPHAS)
# config surrogate: evaluate and compare score it beside COAR (rules/fit.smk fits it).
SURROGATE_INPUT = {"surrogate": SURROGATE_FILE} if SURROGATE else {}
SURROGATE_OPTION = f"--surrogate {shlex.quote(SURROGATE_FILE)}" if SURROGATE else ""


rule evaluate:
    """Held-out correlation of the attributions' predictions, at every evaluation alpha."""
    input:
        **SURROGATE_INPUT,
        run=rules.prepare.output,
        stamp=config_stamp("evaluate"),
        attributions=rules.fit.output,
        data=rules.merge.output,
        heldout=expand(f"{RUN}/heldout/alpha-{{alpha}}.h5", alpha=ALPHAS),
    output:
        f"{RUN}/evaluation.json",
    log:
        f"{RUN}/logs/evaluate.log",
    benchmark:
        f"{RUN}/benchmarks/evaluate.tsv"
    params:
        run_dir=run_dir_of_input,
        heldout=HELDOUT_OPTIONS,
        provenance=provenance_options("train"),
        surrogate=SURROGATE_OPTION,
    shell:
        "coar evaluate --run-dir {params.run_dir:q} --attributions {input.attributions:q} --training-data {input.data:q}"
        " {params.heldout} {params.surrogate} {params.provenance} --out {output:q} 2>&1 | tee {log:q}"


# masks: auto: the held-out correlation after each round, against the training masks.
MASKS_CURVE = (
    {"curve": report(f"{RUN}/plots/masks_curve.png", caption="../report/masks_curve.rst", category="2. Evaluation")}
    if AUTO
    else {}
)


rule summarize:
    """summary.md: task, sizes, correlations per alpha, a masks: auto run's rounds, step timings,
    and a histogram (and the rounds' curve)."""
    input:
        run=rules.prepare.output,
        evaluation=rules.evaluate.output,
        timings=step_timings,
        rounds=round_scores,
    output:
        **MASKS_CURVE,
        summary=report(f"{RUN}/summary.md", caption="../report/summary.rst", category="1. Summary"),
        plot=report(
            f"{RUN}/plots/correlation_histogram.png",
            caption="../report/correlation_histogram.rst",
            category="2. Evaluation",
        ),
    log:
        f"{RUN}/logs/summarize.log",
    params:
        run_dir=run_dir_of_input,
        provenance=provenance_options("train"),
        rounds=lambda wildcards, input, output: (
            f"--rounds {' '.join(map(shlex.quote, input.rounds))} --curve {shlex.quote(output.curve)}" if AUTO else ""
        ),
    shell:
        "coar summarize --run-dir {params.run_dir:q} --evaluation {input.evaluation:q} --timings {input.timings:q}"
        " {params.provenance} {params.rounds} --out {output.summary:q} --plot {output.plot:q} 2>&1 | tee {log:q}"


METHOD_FILES = {"coar": f"{RUN}/attributions.h5", **{m: f"{RUN}/baselines/{m}.h5" for m in BASELINES}}
METHOD_OPTIONS = " ".join(f"--method {shlex.quote(f'{m}={path}')}" for m, path in METHOD_FILES.items())


rule compare:
    """COAR and every baseline scored on the same held-out masks: the methods x alphas table."""
    input:
        **SURROGATE_INPUT,
        run=rules.prepare.output,
        stamp=config_stamp("evaluate"),
        attributions=list(METHOD_FILES.values()),
        heldout=expand(f"{RUN}/heldout/alpha-{{alpha}}.h5", alpha=ALPHAS),
    output:
        json=f"{RUN}/comparison.json",
        table=report(f"{RUN}/comparison.md", caption="../report/comparison.rst", category="2. Evaluation"),
    log:
        f"{RUN}/logs/compare.log",
    benchmark:
        f"{RUN}/benchmarks/compare.tsv"
    params:
        run_dir=run_dir_of_input,
        methods=METHOD_OPTIONS,
        heldout=HELDOUT_OPTIONS,
        provenance=provenance_options("train"),
        surrogate=SURROGATE_OPTION,
    shell:
        "coar compare --run-dir {params.run_dir:q} {params.methods} {params.surrogate} {params.heldout}"
        " {params.provenance} --out {output.json:q} --table {output.table:q} 2>&1 | tee {log:q}"


rule figures:
    """The report's figures, as PNG under plots/: table, distributions, scatter, layers, timings."""
    input:
        run=rules.prepare.output,
        comparison=rules.compare.output.json,
        attributions=list(METHOD_FILES.values()),
        heldout=expand(f"{RUN}/heldout/alpha-{{alpha}}.h5", alpha=ALPHAS),
        timings=lambda wildcards: [
            *step_timings(),
            *expand(f"{RUN}/benchmarks/collect_heldout-{{alpha}}.tsv", alpha=ALPHAS),
            *expand(f"{RUN}/benchmarks/baseline_{{method}}.tsv", method=BASELINES),
            f"{RUN}/benchmarks/compare.tsv",
        ],
    output:
        table=report(
            f"{RUN}/plots/correlation_table.png", caption="../report/correlation_table.rst", category="2. Evaluation"
        ),
        distributions=report(
            f"{RUN}/plots/correlation_distributions.png",
            caption="../report/correlation_distributions.rst",
            category="2. Evaluation",
        ),
        scatter=report(
            f"{RUN}/plots/predicted_vs_true.png", caption="../report/predicted_vs_true.rst", category="2. Evaluation"
        ),
        layers=report(
            f"{RUN}/plots/layer_attributions.png",
            caption="../report/layer_attributions.rst",
            category="3. Attributions",
        ),
        timings=report(f"{RUN}/plots/step_timings.png", caption="../report/step_timings.rst", category="4. Timings"),
    log:
        f"{RUN}/logs/figures.log",
    params:
        run_dir=run_dir_of_input,
        methods=METHOD_OPTIONS,
        heldout=HELDOUT_OPTIONS,
        provenance=provenance_options("train"),
    shell:
        "coar figures --run-dir {params.run_dir:q} --comparison {input.comparison:q} {params.methods} {params.heldout}"
        " {params.provenance}"
        " --timings {input.timings:q} --correlation-table {output.table:q}"
        " --correlation-distributions {output.distributions:q} --predicted-vs-true {output.scatter:q}"
        " --layer-attributions {output.layers:q} --step-timings {output.timings:q} 2>&1 | tee {log:q}"

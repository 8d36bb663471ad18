rule evaluate:
    """Held-out correlation of the attributions' predictions, at every evaluation alpha."""
    input:
        run=rules.prepare.output,
        attributions=rules.fit.output,
        heldout=expand(f"{RUN}/heldout/alpha-{{alpha}}.h5", alpha=ALPHAS),
    output:
        f"{RUN}/evaluation.json",
    params:
        run_dir=run_dir_of_input,
        alpha=config["alpha"],
        heldout=" ".join(f"--heldout {a}={RUN}/heldout/alpha-{a}.h5" for a in ALPHAS),
    log:
        f"{RUN}/logs/evaluate.log",
    conda:
        "../envs/coar.yaml"
    benchmark:
        f"{RUN}/benchmarks/evaluate.tsv"
    shell:
        "coar evaluate --run-dir {params.run_dir} --attributions {input.attributions} --alpha {params.alpha}"
        " {params.heldout} --out {output} 2>&1 | tee {log}"


rule summarize:
    """summary.md: task, sizes, correlations per alpha, step timings, and a histogram."""
    input:
        run=rules.prepare.output,
        evaluation=rules.evaluate.output,
        timings=[
            f"{RUN}/benchmarks/prepare.tsv",
            *expand(f"{RUN}/benchmarks/collect-{{shard}}.tsv", shard=range(config["shards"])),
            f"{RUN}/benchmarks/merge.tsv",
            f"{RUN}/benchmarks/fit.tsv",
            f"{RUN}/benchmarks/evaluate.tsv",
        ],
    output:
        summary=f"{RUN}/summary.md",
        plot=f"{RUN}/plots/correlation_histogram.png",
    params:
        run_dir=run_dir_of_input,
    log:
        f"{RUN}/logs/summarize.log",
    conda:
        "../envs/coar.yaml"
    shell:
        "coar summarize --run-dir {params.run_dir} --evaluation {input.evaluation} --timings {input.timings}"
        " --out {output.summary} 2>&1 | tee {log}"

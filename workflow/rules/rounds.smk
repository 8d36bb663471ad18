# masks: auto (coar/rounds.py): the training masks grow in rounds of ROUND_SHARDS shards (round r
# holds shards r * ROUND_SHARDS .. (r + 1) * ROUND_SHARDS - 1, collected in parallel). The
# checkpoint fit_round adds a round's shards to the previous round's statistics, fits, scores the
# fit on the held-out masks at the training alpha and writes its decision; Snakemake then reads
# the decisions again (final_round) and asks for the next round, or goes on to fit and merge the
# shards of the rounds done. A fixed run (masks: a number) never runs fit_round. Helpers: common.smk.


checkpoint fit_round:
    """Round r of a masks: auto run: its shards added to round r - 1's statistics, fitted, scored
    on the held-out masks and judged (continue or stop)."""
    input:
        run=rules.prepare.output,
        stamp=config_stamp("rounds"),
        heldout=TRAIN_HELDOUT,
        previous=lambda wildcards: [round_file(int(wildcards.round) - 1, "h5")] if int(wildcards.round) else [],
        shards=lambda wildcards: shard_files((int(wildcards.round) + 1) * ROUND_SHARDS)[
            int(wildcards.round) * ROUND_SHARDS :
        ],
    output:
        state=f"{RUN}/rounds/round-{{round}}.h5",
        score=f"{RUN}/rounds/round-{{round}}.json",
    log:
        f"{RUN}/logs/fit_round-{{round}}.log",
    benchmark:
        f"{RUN}/benchmarks/fit_round-{{round}}.tsv"
    wildcard_constraints:
        round=r"\d+",
    resources:
        mem_mb=lambda wildcards, attempt: fit_mem_mb(attempt, run_sizes()),
    params:
        run_dir=run_dir_of_input,
        solver=config["solver"],
        previous=lambda wildcards, input: shell_options({"previous": input.previous[0] if input.previous else None}),
        options=shell_options(
            {
                "example-block": config["solver"]["example_block"],
                "min-gain": config["masks_auto"]["min_gain"],
                "confidence": config["masks_auto"]["confidence"],
                "max-masks": mask_budget(config),
            }
        ),
        provenance=provenance_options("expect"),
    shell:
        "coar fit-round --run-dir {params.run_dir:q} --round {wildcards.round:q} {params.previous}"
        " --heldout {input.heldout:q} --out-state {output.state:q} --out-score {output.score:q}"
        " --method {params.solver[method]:q} --backend {params.solver[backend]:q} --chunk-rows {params.solver[chunk_rows]:q}"
        " --memory-budget {params.solver[memory_budget]:q} {params.options} {params.provenance} {input.shards:q}"
        " 2>&1 | tee {log:q}"

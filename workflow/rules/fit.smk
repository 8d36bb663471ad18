rule fit:
    """One linear model per example on the merged dataset: attributions.h5."""
    input:
        run=rules.prepare.output,
        data=rules.merge.output,
    output:
        f"{RUN}/attributions.h5",
    params:
        run_dir=run_dir_of_input,
        solver=config["solver"],
        provenance=provenance_options(),
    log:
        f"{RUN}/logs/fit.log",
    benchmark:
        f"{RUN}/benchmarks/fit.tsv"
    shell:
        "coar fit --run-dir {params.run_dir:q} --data {input.data:q} --out {output:q} --method {params.solver[method]:q}"
        " --backend {params.solver[backend]:q} --chunk-rows {params.solver[chunk_rows]:q} {params.provenance}"
        " 2>&1 | tee {log:q}"

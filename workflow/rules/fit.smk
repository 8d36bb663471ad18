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
    log:
        f"{RUN}/logs/fit.log",
    benchmark:
        f"{RUN}/benchmarks/fit.tsv"
    shell:
        "coar fit --run-dir {params.run_dir} --data {input.data} --out {output} --method {params.solver[method]}"
        " --backend {params.solver[backend]} --chunk-rows {params.solver[chunk_rows]} 2>&1 | tee {log}"

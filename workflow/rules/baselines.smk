BASELINES = config["evaluation"]["baselines"]


rule baseline:
    """Attributions by one baseline method, in COAR's format and sign convention: baselines/<method>.h5."""
    input:
        run=rules.prepare.output,
    output:
        f"{RUN}/baselines/{{method}}.h5",
    wildcard_constraints:
        method="loo|grad_x_param|conductance|internal_influence",
    params:
        run_dir=run_dir_of_input,
        options=(
            f"--ablation {config['ablation']} --masks-per-pass {config['masks_per_pass']}"
            f" --max-batch {config['max_batch']} --device {config['device']}"
            + (f" --output-fn {config['output_fn']}" if config["output_fn"] else "")
            + f" {loader_options()}"
        ),
    log:
        f"{RUN}/logs/baseline-{{method}}.log",
    conda:
        "../envs/coar.yaml"
    benchmark:
        f"{RUN}/benchmarks/baseline_{{method}}.tsv"
    threads: 1
    # Below the collection jobs: when cores are scarce, COAR's own data comes first.
    priority: -1
    shell:
        "coar baseline --run-dir {params.run_dir} --method {wildcards.method} --out {output} {params.options}"
        " --threads {threads} 2>&1 | tee {log}"

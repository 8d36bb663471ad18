from coar.constants import BASELINE_METHODS

BASELINES = config["evaluation"]["baselines"]


rule baseline:
    """Attributions by one baseline method, in COAR's format and sign convention: baselines/<method>.h5."""
    input:
        run=rules.prepare.output,
        stamp=config_stamp("baseline"),
    output:
        f"{RUN}/baselines/{{method}}.h5",
    log:
        f"{RUN}/logs/baseline-{{method}}.log",
    benchmark:
        f"{RUN}/benchmarks/baseline_{{method}}.tsv"
    wildcard_constraints:
        method="|".join(BASELINE_METHODS),
    # Below the collection jobs: when cores are scarce, COAR's own data comes first.
    priority: -1
    threads: 1
    params:
        run_dir=run_dir_of_input,
        options=baseline_options(),
    shell:
        "coar baseline --run-dir {params.run_dir:q} --method {wildcards.method:q} --out {output:q} {params.options}"
        " --threads {threads} 2>&1 | tee {log:q}"

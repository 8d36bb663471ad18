rule explorer:
    """explorer.html: the run's interactive attribution explorer, one self-contained page (coar/explorer.py),
    with every edit of config `edits` (so the default target makes them too)."""
    input:
        run=rules.prepare.output,
        attributions=rules.fit.output,
        evaluation=rules.evaluate.output,
        comparison=rules.compare.output.json,
        heldout=expand(f"{RUN}/heldout/alpha-{{alpha}}.h5", alpha=ALPHAS),
        edits=rules.edits.input,
    output:
        f"{RUN}/explorer.html",
    log:
        f"{RUN}/logs/explorer.log",
    benchmark:
        f"{RUN}/benchmarks/explorer.tsv"
    params:
        run_dir=run_dir_of_input,
    shell:
        "coar explore {params.run_dir:q} --out {output:q} --rebuild --no-open 2>&1 | tee {log:q}"

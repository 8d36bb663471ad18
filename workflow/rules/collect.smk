rule collect:
    """Shard i of the training masks: batched ablated forward passes -> shard-i.h5."""
    input:
        run=rules.prepare.output,
    output:
        f"{RUN}/shards/shard-{{shard}}.h5",
    wildcard_constraints:
        shard=r"\d+",
    params:
        run_dir=run_dir_of_input,
        shards=config["shards"],
        masks=config["masks"],
        alpha=config["alpha"],
        options=collect_options("train"),
    log:
        f"{RUN}/logs/collect-{{shard}}.log",
    conda:
        "../envs/coar.yaml"
    benchmark:
        f"{RUN}/benchmarks/collect-{{shard}}.tsv"
    threads: 1
    shell:
        "coar collect --run-dir {params.run_dir} --out {output} --shard {wildcards.shard} --shards {params.shards}"
        " --masks {params.masks} --alpha {params.alpha} {params.options} --threads {threads} 2>&1 | tee {log}"


rule merge:
    """Check that every shard belongs to this run and the shards tile all m rows; merge them."""
    input:
        run=rules.prepare.output,
        shards=expand(f"{RUN}/shards/shard-{{shard}}.h5", shard=range(config["shards"])),
    output:
        f"{RUN}/dataset.h5",
    params:
        run_dir=run_dir_of_input,
        masks=config["masks"],
    log:
        f"{RUN}/logs/merge.log",
    conda:
        "../envs/coar.yaml"
    benchmark:
        f"{RUN}/benchmarks/merge.tsv"
    shell:
        "coar merge --run-dir {params.run_dir} --masks {params.masks} --out {output} {input.shards} 2>&1 | tee {log}"


rule collect_heldout:
    """Fresh held-out masks at one alpha (never equal to a training mask) and their outputs."""
    input:
        run=rules.prepare.output,
        data=rules.merge.output,
    output:
        f"{RUN}/heldout/alpha-{{alpha}}.h5",
    wildcard_constraints:
        alpha=r"[0-9.e-]+",
    params:
        run_dir=run_dir_of_input,
        masks=config["evaluation"]["heldout_masks"],
        options=collect_options("heldout"),
        stream=lambda wildcards: ALPHAS.index(wildcards.alpha),
    log:
        f"{RUN}/logs/collect_heldout-{{alpha}}.log",
    conda:
        "../envs/coar.yaml"
    benchmark:
        f"{RUN}/benchmarks/collect_heldout-{{alpha}}.tsv"
    threads: 1
    shell:
        "coar collect --run-dir {params.run_dir} --out {output} --masks {params.masks}"
        " --alpha {wildcards.alpha} --stream {params.stream} --exclude-masks-of {input.data} {params.options}"
        " --threads {threads} 2>&1 | tee {log}"

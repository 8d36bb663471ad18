from coar.solver import closed_form_bytes
from coar.solver.memory import RESERVE_MARGIN

# Cluster resources of the fit (docs/scaling.md), with N components, n examples (prepare.json),
# m masks and a block of b = min(n, solver.example_block or FIT_BLOCK) examples:
#   mem_mb  = attempt * (1500 + (closed_form_bytes(N, b, method) + RESERVE_MARGIN) / 2**20)
#   runtime = attempt * (10 + (m N^2 + m N n + N^3 / 3 + 2 N^2 n) / FIT_RATE / 60)   minutes
# closed_form_bytes is the solver's own estimate (the Gram matrix, factored in place, and one
# block of examples), independent of n; 1500 MB is Python and its libraries (the process's
# resident memory, which `auto` measures and keeps out of the budget with RESERVE_MARGIN).
# FIT_RATE is a conservative float64 multiply-add rate of one CPU thread (3.8e10 measured, benchmarks/bench_solver.py).
FIT_BLOCK = 4096
FIT_RATE = 2e10
fit_mem_mb = lambda attempt, s: math.ceil(
    attempt
    * (
        1500
        + closed_form_bytes(
            s["n_components"],
            min(s["n_examples"], config["solver"]["example_block"] or FIT_BLOCK),
            config["solver"]["method"],
        )
        / 2**20
        + RESERVE_MARGIN / 2**20
    )
)
fit_runtime = lambda attempt, s: math.ceil(
    attempt
    * (
        10
        + (
            mask_budget(config) * s["n_components"] * (s["n_components"] + s["n_examples"])
            + s["n_components"] ** 3 / 3
            + 2 * s["n_components"] ** 2 * s["n_examples"]
        )
        / FIT_RATE
        / 60
    )
)


rule fit:
    """One linear model per example on the merged dataset: attributions.h5. A masks: auto run
    solves its last round's statistics instead (the same numbers, without reading the masks again)."""
    input:
        run=rules.prepare.output,
        stamp=config_stamp("fit"),
        data=lambda wildcards: round_file(final_round(), "h5") if AUTO else rules.merge.output[0],
    output:
        f"{RUN}/attributions.h5",
    log:
        f"{RUN}/logs/fit.log",
    benchmark:
        f"{RUN}/benchmarks/fit.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: fit_mem_mb(attempt, run_sizes()),
        runtime=lambda wildcards, attempt: fit_runtime(attempt, run_sizes()),
    params:
        run_dir=run_dir_of_input,
        source="--state" if AUTO else "--data",
        solver=config["solver"],
        provenance=provenance_options("expect"),
        example_block=shell_options({"example-block": config["solver"]["example_block"]}),
    shell:
        "coar fit --run-dir {params.run_dir:q} {params.source} {input.data:q} --out {output:q} --method {params.solver[method]:q}"
        " --backend {params.solver[backend]:q} --chunk-rows {params.solver[chunk_rows]:q}"
        " --memory-budget {params.solver[memory_budget]:q} {params.example_block} {params.provenance}"
        " 2>&1 | tee {log:q}"


# Cluster resources of the surrogate's fit (coar.solver.surrogate.ProjectedQuadratic.fit_chunks),
# with F = N + r (r + 1) / 2 features, n examples, m masks and c = solver.chunk_rows: the F x F
# Gram matrix (and its scaled copy and factor), its F x n cross products (and their scaled copy)
# and one chunk's masks, features and outputs, in float64; two passes over the rows.
surrogate_features = lambda s: s["n_components"] + config["surrogate"]["rank"] * (config["surrogate"]["rank"] + 1) // 2
surrogate_mem_mb = lambda attempt, s: math.ceil(
    attempt
    * (
        1500
        + 8
        * (
            3 * surrogate_features(s) ** 2
            + 2 * surrogate_features(s) * s["n_examples"]
            + 3 * config["solver"]["chunk_rows"] * (surrogate_features(s) + s["n_examples"])
        )
        / 2**20
    )
)
surrogate_runtime = lambda attempt, s: math.ceil(
    attempt
    * (
        10
        + (
            mask_budget(config) * surrogate_features(s) * (surrogate_features(s) + s["n_examples"])
            + surrogate_features(s) ** 3 / 3
        )
        / FIT_RATE
        / 60
    )
)


# Only when the config asks for one (config surrogate.kind).
if SURROGATE:

    rule fit_surrogate:
        """config surrogate: a surrogate beyond linear COAR on the same training rows (streamed from the
        merged dataset, two passes), its basis from the run's fitted weights: surrogate.h5."""
        input:
            run=rules.prepare.output,
            stamp=config_stamp("surrogate"),
            data=rules.merge.output,
            attributions=rules.fit.output,
        output:
            SURROGATE_FILE,
        log:
            f"{RUN}/logs/fit_surrogate.log",
        benchmark:
            f"{RUN}/benchmarks/fit_surrogate.tsv"
        resources:
            mem_mb=lambda wildcards, attempt: surrogate_mem_mb(attempt, run_sizes()),
            runtime=lambda wildcards, attempt: surrogate_runtime(attempt, run_sizes()),
        params:
            run_dir=run_dir_of_input,
            surrogate=config["surrogate"],
            chunk_rows=config["solver"]["chunk_rows"],
            provenance=provenance_options("expect"),
        shell:
            "coar fit-surrogate --run-dir {params.run_dir:q} --data {input.data:q} --attributions {input.attributions:q}"
            " --kind {params.surrogate[kind]:q} --rank {params.surrogate[rank]:q} --penalty {params.surrogate[penalty]:q}"
            " --chunk-rows {params.chunk_rows:q} {params.provenance} --out {output:q} 2>&1 | tee {log:q}"

# Helpers shared by the rules. Every value that reaches a shell command is quoted (shlex.quote
# here, `:q` in the rules), so no config string is ever interpreted by the shell.

import glob
import hashlib
import json
import shlex
from pathlib import Path

from coar.atomic import write_json
from coar.resources import RunShape, check_prepared_run
from coar.rounds import read_score
from coar.run import PROVENANCE, Run


def run_dir_of_input(wildcards, input):
    """The run folder, derived from the prepare step's files among a rule's inputs."""
    return os.path.dirname(input.run[0])


def shell_options(options):
    """`--key value` pairs, each value quoted for the shell; None values are left out."""
    return " ".join(f"--{key} {shlex.quote(str(value))}" for key, value in options.items() if value is not None)


def provenance_options(alpha):
    """How the data a step reads must have been made (coar.run.PROVENANCE), from the config.
    `alpha` names the step's alpha option: "expect" (merge, fit: the data's) or "train"
    (evaluate, compare, figures: the attributions')."""
    values = {key.replace("_", "-"): config[key] for key in PROVENANCE}
    values[f"{alpha}-alpha"] = values.pop("alpha")
    return shell_options(values)


def task_options():
    """The config's task for the steps that reopen it (they refuse a run folder naming another)."""
    return shell_options({"task": config["task"]["spec"], "task-params": json.dumps(config["task"]["params"])})


def loader_options():
    """How Dataset examples are read (config `loader`): DataLoader workers, pinned memory, cache."""
    c = config["loader"]
    pin = "--loader-pin-memory" if c["pin_memory"] else "--no-loader-pin-memory"
    return f"{shell_options({'loader-workers': c['workers'], 'loader-cache-mb': c['cache_mb']})} {pin}"


def collect_options(purpose):
    """Command-line options shared by training and held-out collection."""
    c = config
    options = shell_options(
        {
            "seed": c["seed"],
            "ablation": c["ablation"],
            "masks-per-pass": c["masks_per_pass"],
            "max-batch": c["max_batch"],
            "device": c["device"],
            "purpose": purpose,
            "output-fn": c["output_fn"],
            "precision": c["precision"],
        }
    )
    return f"{options} {task_options()} {loader_options()}{fast_path_options(c['fast_path'])}"


def baseline_options():
    """Command-line options of the baseline jobs."""
    c = config
    options = shell_options(
        {
            "ablation": c["ablation"],
            "masks-per-pass": c["masks_per_pass"],
            "max-batch": c["max_batch"],
            "device": c["device"],
            "output-fn": c["output_fn"],
        }
    )
    return f"{options} {task_options()} {loader_options()}"


def fast_path_options(fast):
    """--fold-bn / --no-fold-bn etc. from the config's fast_path block."""
    return "".join(
        f" --{'' if fast[k] else 'no-'}{k.replace('_', '-')}" for k in ("fold_bn", "channels_last", "compile")
    )


# The checks before collection. The prepare job checks the config's edits against the run it
# has just saved (read from the edits stamp, so a changed edit never re-prepares), so on a first
# run no collection job starts before they pass. check_masks (masks, memory, disk) runs next with
# the highest priority: on one core before any collection job; with more, a collection job may
# start beside it, and its shard is kept for the corrected config (a refusal here never costs a
# re-prepare, as it would in the prepare job). On a prepared run the Snakefile checks the mask
# counts at start-up (check_mask_counts), and check_edits, when the edits changed, runs with the
# highest priority. The collection jobs take neither check's output as an input: a check redone would
# redo them, and taken as `ancient` Snakemake 9 skips the jobs after a redone check for that
# invocation (snakemake issue 4166: a grown run stopped after its check with a shard missing).
# merge takes check_masks', as it must rerun when the masks change anyway; edit_plan check_edits'.
SURROGATE = config["surrogate"]["kind"]  # a surrogate beyond linear COAR (rules/fit.smk), or None
SURROGATE_FILE = f"{RUN}/surrogate.h5"
CHECKED_MASKS = f"{RUN}/checks/masks.ok"
CHECKED_EDITS = f"{RUN}/checks/edits.ok"


# masks: auto (rules/rounds.smk): round r holds training shards r * ROUND_SHARDS .. (r + 1) * ROUND_SHARDS - 1.
ROUND_SHARDS = round_masks(config) // config["shard_masks"] if AUTO else 0
TRAIN_HELDOUT = f"{RUN}/heldout/alpha-{config['alpha']:g}.h5"


def round_file(round, suffix):
    """Round `round`'s statistics (h5) or score and decision (json)."""
    return f"{RUN}/rounds/round-{round}.{suffix}"


def shard_files(count):
    """The first `count` training shards."""
    return expand(f"{RUN}/shards/shard-{{shard}}.h5", shard=range(count))


def final_round():
    """The round at which the masks: auto run stopped (each unknown decision is a checkpoint to run
    first); each decision read through coar.rounds.read_score, which refuses a score file altered
    after fit-round wrote it or made for another run."""
    round = 0
    while not read_score(checkpoints.fit_round.get(round=round).output.score, {"round": round, **Run(RUN).expect}).stop:
        round += 1
    return round


def training_shards(wildcards=None):
    """Every training shard: all of a fixed run's; a masks: auto run's up to the round it stopped at."""
    return shard_files((final_round() + 1) * ROUND_SHARDS if AUTO else len(SHARD_ROWS))


def round_scores(wildcards=None):
    """Every round's score and decision, in order (none for a fixed run)."""
    return [round_file(r, "json") for r in range(final_round() + 1)] if AUTO else []


def step_timings(wildcards=None):
    """The Snakemake benchmark files of the steps up to evaluate (masks: auto: its rounds too)."""
    shards = len(training_shards())
    rounds = [f"{RUN}/benchmarks/fit_round-{r}.tsv" for r in range(len(round_scores()))]
    return [
        f"{RUN}/benchmarks/prepare.tsv",
        *expand(f"{RUN}/benchmarks/collect-{{shard}}.tsv", shard=range(shards)),
        *rounds,
        f"{RUN}/benchmarks/merge.tsv",
        f"{RUN}/benchmarks/fit.tsv",
        *([f"{RUN}/benchmarks/fit_surrogate.tsv"] if SURROGATE else []),
        f"{RUN}/benchmarks/evaluate.tsv",
    ]


def check_mask_counts(run, masks, method):
    """The masks the prepared `run` (coar.run.Run) needs: more than its components for OLS
    (coar.config.check_masks_for_method), and the surrogate's rank and masks
    (coar.config.check_surrogate_for_run). Arithmetic alone, so the Snakefile checks it at start-up."""
    check_masks_for_method(masks, method, run.n_components, masks_key(config))
    check_surrogate_for_run(config["surrogate"], run.n_components, run.n_examples, masks, masks_key(config))


def check_run_masks(run_dir, masks, method):
    """check_mask_counts, and the memory and disk of the run at its real sizes
    (coar.resources.check_prepared_run): the check_masks job; the line to log."""
    run = Run(run_dir)
    n_components = run.n_components
    check_mask_counts(run, masks, method)
    needs = check_prepared_run(run_dir, RunShape.of_config(config))
    return (
        f"{masks} masks for {n_components} components: enough for solver.method {method}; "
        f"largest collection job {needs.collect_bytes / 1e9:.3g} GB, results "
        f"{needs.disk_bytes / 1e9:.3g} GB of disk\n"
    )


# Config stamps: the config values each group of steps depends on, in a file named by their
# digest ({RUN}/config/<group>-<digest>.json) that the group's rules take as an input. The file
# of the current digest is written when the workflow is read, unless present (the group's older
# stamps are removed then), so after a change it is newer than every output of the group and
# they are redone whatever Snakemake's rerun triggers (`--rerun-triggers mtime`, a results
# folder copied into a fresh checkout, a config changed back and forth): results never present
# a config they were not made with. The steps also check the provenance of what they read.
STAMPED = {
    "prepare": {"task": config["task"], "components": config["components"]},
    # Not masks nor shard sizes: a grown run keeps its finished shards (each collect job's rows are
    # its params, and merge checks that the shards tile the rows).
    "data": {"task": config["task"], **{k: config[k] for k in PROVENANCE}},
    "heldout": {
        "task": config["task"],
        **{k: config[k] for k in PROVENANCE if k != "alpha"},
        "alphas": ALPHAS,
        "heldout_masks": config["evaluation"]["heldout_masks"],
    },
    "baseline": {"task": config["task"], "ablation": config["ablation"], "output_fn": config["output_fn"]},
    "fit": {"method": config["solver"]["method"]},
    # With the surrogate's settings only when one is asked for, so that other runs keep their stamps.
    "evaluate": {
        "alphas": ALPHAS,
        "baselines": config["evaluation"]["baselines"],
        **({"surrogate": config["surrogate"]} if SURROGATE else {}),
    },
    "edits": {"edits": config["edits"]},
    **({"surrogate": config["surrogate"]} if SURROGATE else {}),
    # How a masks: auto run scores and stops its rounds (its shards stay, as when a run grows).
    "rounds": {
        "method": config["solver"]["method"],
        "masks_auto": config["masks_auto"],
        "budget": mask_budget(config),
        "shard_masks": config["shard_masks"],
    },
}


def config_stamp(group):
    """The stamp file of the current config's values for `group` (see STAMPED)."""
    digest = hashlib.sha256(json.dumps(STAMPED[group], sort_keys=True).encode()).hexdigest()[:16]
    return f"{RUN}/config/{group}-{digest}.json"


def write_config_stamps():
    """Write every group's current stamp that is missing, after removing the group's others."""
    for group, values in STAMPED.items():
        path = config_stamp(group)
        if not os.path.exists(path):
            for stale in glob.glob(f"{RUN}/config/{group}-*.json"):
                os.remove(stale)
            write_json(path, values)


write_config_stamps()

# Helpers shared by the rules. Every value that reaches a shell command is quoted (shlex.quote
# here, `:q` in the rules), so no config string is ever interpreted by the shell.

import shlex


def run_dir_of_input(wildcards, input):
    """The run folder, derived from the prepare step's files among a rule's inputs."""
    return os.path.dirname(input.run[0])


def shell_options(options):
    """`--key value` pairs, each value quoted for the shell; None values are left out."""
    return " ".join(f"--{key} {shlex.quote(str(value))}" for key, value in options.items() if value is not None)


def provenance_options(alpha=True):
    """How the data a step reads must have been made, from the config (coar/steps.py provenance)."""
    c = config
    return shell_options({
        "alpha": c["alpha"] if alpha else None,
        "seed": c["seed"],
        "ablation": c["ablation"],
        "output-fn": c["output_fn"],
        "precision": c["precision"],
    })


def loader_options():
    """How Dataset examples are read (config `loader`): DataLoader workers, pinned memory, cache."""
    c = config["loader"]
    pin = "--loader-pin-memory" if c["pin_memory"] else "--no-loader-pin-memory"
    return f"{shell_options({'loader-workers': c['workers'], 'loader-cache-mb': c['cache_mb']})} {pin}"


def collect_options(purpose):
    """Command-line options shared by training and held-out collection."""
    c = config
    options = shell_options({
        "seed": c["seed"],
        "ablation": c["ablation"],
        "masks-per-pass": c["masks_per_pass"],
        "max-batch": c["max_batch"],
        "device": c["device"],
        "purpose": purpose,
        "output-fn": c["output_fn"],
        "precision": c["precision"],
    })
    return f"{options} {loader_options()}{fast_path_options(c['fast_path'])}"


def baseline_options():
    """Command-line options of the baseline jobs."""
    c = config
    options = shell_options({
        "ablation": c["ablation"],
        "masks-per-pass": c["masks_per_pass"],
        "max-batch": c["max_batch"],
        "device": c["device"],
        "output-fn": c["output_fn"],
    })
    return f"{options} {loader_options()}"


def fast_path_options(fast):
    """--fold-bn / --no-fold-bn etc. from the config's fast_path block."""
    return "".join(f" --{'' if fast[k] else 'no-'}{k.replace('_', '-')}" for k in ("fold_bn", "channels_last", "compile"))

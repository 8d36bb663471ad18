# Helpers shared by the rules.


def run_dir_of_input(wildcards, input):
    """The run folder, derived from the prepare step's files among a rule's inputs."""
    return os.path.dirname(input.run[0])


def collect_options(purpose):
    """Command-line options shared by training and held-out collection."""
    c = config
    output_fn = f" --output-fn {c['output_fn']}" if c["output_fn"] else ""
    return (
        f"--seed {c['seed']} --ablation {c['ablation']} --masks-per-pass {c['masks_per_pass']}"
        f" --max-batch {c['max_batch']} --device {c['device']} --purpose {purpose}{output_fn}"
        f" --precision {c['precision']}{fast_path_options(c['fast_path'])}"
    )


def fast_path_options(fast):
    """--fold-bn / --no-fold-bn etc. from the config's fast_path block."""
    return "".join(f" --{'' if fast[k] else 'no-'}{k.replace('_', '-')}" for k in ("fold_bn", "channels_last", "compile"))

# Helpers shared by the rules.


def run_dir_of_input(wildcards, input):
    """The run folder, derived from the prepare step's files among a rule's inputs."""
    return os.path.dirname(input.run[0])


def loader_options():
    """How Dataset examples are read (config `loader`): DataLoader workers, pinned memory, cache."""
    c = config["loader"]
    pin = "--loader-pin-memory" if c["pin_memory"] else "--no-loader-pin-memory"
    return f"--loader-workers {c['workers']} {pin} --loader-cache-mb {c['cache_mb']}"


def collect_options(purpose):
    """Command-line options shared by training and held-out collection."""
    c = config
    output_fn = f" --output-fn {c['output_fn']}" if c["output_fn"] else ""
    return (
        f"--seed {c['seed']} --ablation {c['ablation']} --masks-per-pass {c['masks_per_pass']}"
        f" --max-batch {c['max_batch']} --device {c['device']} --purpose {purpose}{output_fn} {loader_options()}"
    )

"""Checks of a run's configuration beyond its schema (workflow/schemas/config.schema.yaml), run at start-up.

Everything that can be known before the first job is checked here, so a bad value fails in a
second with a message naming the key and the fix, not after hours of collection.
"""

from __future__ import annotations

import difflib
import math
import re
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import yaml

from coar.constants import DEFAULT_TASK_FUNCTION, OUTPUT_FUNCTION_NAMES
from coar.edit.spec import check_edits
from coar.masks import collection_jobs, is_auto, mask_budget, round_masks
from coar.resources import RunShape, check_needs
from coar.spec import import_object, module_exists, parse_spec

SCHEMA = files("coar") / "config.schema.yaml"
"""The config schema, shipped as package data (in the source tree, a link to the file Snakemake
validates with, workflow/schemas/config.schema.yaml), so an installed coar finds it too."""

# 'package.module' or 'package.module:function', identifiers only: nothing a shell interprets.
SPEC_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*)?")
RUN_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
MAX_COLLECTION_JOBS = 10_000
"""Most collection jobs a config may make: Snakemake plans 10,000 jobs in about 90 s on 2 cores."""
DEFAULT_RUN_KEYS = ("edits",)
"""Keys of config/config.yaml that belong to the default run (the digits CNN) alone, not defaults:
a config of one's own (`--configfile`, module use) has them only where it names them, so the
default run's edit of the digit 3 never reaches another run (`fill_defaults`, workflow/Snakefile)."""


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key."""


def check_config(config: dict) -> None:
    """Refuse, before any work, values the schema cannot judge (e.g. a task module that does not
    exist, NaN or infinity, a run that cannot fit this machine's memory or disk)."""
    _check_finite(config, "")
    _check_integers(config, _schema(), "")
    _check_run_name(config["run"])
    _check_task(config["task"]["spec"])
    if config["components"].get("preset") is not None:
        _check_component_preset(config["components"]["preset"])
    if config.get("output_fn") is not None:
        _check_output_fn(config["output_fn"])
    check_edits(config.get("edits", []))
    if config["shards"] is None and config["shard_masks"] is None:
        raise ConfigError("config keys 'shards' and 'shard_masks' are both null; set shard_masks (masks per "
                          "collection job) or shards (number of jobs)")
    if is_auto(config):
        _check_rounds(config)
    elif config["shards"] is not None and config["shards"] > config["masks"]:
        raise ConfigError(f"config key 'shards': {config['shards']} shards for {config['masks']} masks; "
                          "use at most one shard per mask")
    _check_job_count(config)
    _check_pass_rows(config)
    _check_sizes(config)
    if config["device"] == "cuda":
        _check_gpu()
    if config["solver"]["backend"] == "cupy":
        _check_cupy()


def is_default_run(given: dict, config_files: list, defaults_path: str | Path) -> bool:
    """Whether Snakemake was asked for the default run itself: no config file of one's own
    (`--configfile`, `config_files`) and no other task among the `--config` values (`given`)."""
    task = given.get("task")
    default_spec = yaml.safe_load(Path(defaults_path).read_text())["task"]["spec"]
    return not config_files and not (isinstance(task, dict) and task.get("spec", default_spec) != default_spec)


def fill_defaults(config: dict, defaults_path: str | Path) -> None:
    """Give `config` (in place) every key of the defaults file it lacks, nested blocks key by key,
    except what belongs to the default run alone: its `edits` (DEFAULT_RUN_KEYS) and, for another
    task, its task's params. A config of another task that names no `run` is refused: its results
    would go to the default run's folder."""
    defaults = yaml.safe_load(Path(defaults_path).read_text())
    for key in DEFAULT_RUN_KEYS:
        defaults.pop(key, None)
    task, default_task = config.get("task"), defaults["task"]
    if isinstance(task, dict) and task.get("spec", default_task["spec"]) != default_task["spec"]:
        defaults["task"] = {key: value for key, value in default_task.items() if key != "params"}
    if "run" not in config and isinstance(task, dict) and {**default_task, **task} != default_task:
        spec = task.get("spec", default_task["spec"])
        raise ConfigError(f"config key 'run': not given, so this run of task {spec!r}"
                          f"{' with other params' if spec == default_task['spec'] else ''} would write into "
                          f"results/{defaults['run']}/, the default run's folder; name your run (e.g. run: mine)")
    _fill(config, defaults)


def _fill(config: dict, defaults: dict) -> None:
    for key, value in defaults.items():
        if key not in config:
            config[key] = value
        elif isinstance(value, dict) and isinstance(config[key], dict):
            _fill(config[key], value)


def check_keys(config: dict) -> None:
    """Refuse a key the schema does not know, in one line naming the closest known keys (the
    schema validator would print the whole schema). Run before the schema validation."""
    _check_keys(config, _schema(), "")


def check_values(config: dict) -> None:
    """Refuse a value the schema does not allow (a wrong type, a number out of range, a word not
    among the choices) in one line naming the key, what is wrong and what the key takes; the
    schema validator would print the whole schema. Run after `check_keys`, before the validation."""
    import jsonschema

    schema = _schema()
    error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(config))
    if error is None:
        return
    path = list(error.absolute_path)
    if not path:
        raise ConfigError(f"config: {error.message} (every key: config/README.md)")
    node = schema
    for part in path:
        node = _resolve(node)
        node = node.get("items", {}) if isinstance(part, int) else node.get("properties", {}).get(part, {})
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    takes = " ".join(_resolve(node).get("description", "").split())
    raise ConfigError(f"config key {key!r}: {error.message}{f' ({takes})' if takes else ''}{_number_as_text(error.instance)} "
                      "(every key: config/README.md)")


def _number_as_text(value: object) -> str:
    """A hint for a number YAML read as text: PyYAML (as Snakemake) reads 1e9 and 1e+9 as strings."""
    if not isinstance(value, str):
        return ""
    try:
        number = float(value.replace("_", ""))
    except ValueError:
        return ""
    if not math.isfinite(number):
        return ""
    written = f"{int(number)}" if number.is_integer() else repr(number)
    return f"; YAML reads {value} as text, not a number: write it out, {written}"


def _resolve(schema: dict) -> dict:
    """A schema node with its $ref followed."""
    return _schema()["$defs"][schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema


def _check_keys(value: object, schema: dict, key: str) -> None:
    schema = _resolve(schema)
    if not isinstance(value, dict) or "properties" not in schema:
        return
    known = schema["properties"]
    for name, sub in value.items():
        where = f"{key}.{name}" if key else str(name)
        if name in known:
            _check_keys(sub, known[name], where)
        elif schema.get("additionalProperties") is False:
            close = difflib.get_close_matches(str(name), list(known), n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(repr(f'{key}.{c}' if key else c) for c in close)}?" if close else (
                f"known keys{f' of {key!r}' if key else ''}: {', '.join(known)}")
            raise ConfigError(f"unknown config key {where!r}: {hint} (every key: config/README.md)")


def check_spec(key: str, spec: object) -> None:
    """Refuse a spec that is not 'package.module[:function]' (identifiers, dots and one colon)."""
    if not isinstance(spec, str) or not SPEC_PATTERN.fullmatch(spec):
        raise ConfigError(f"config key {key!r}: {spec!r} is not 'package.module' or 'package.module:function' "
                          "(letters, digits and underscores, dots between names, one colon); fix the name")


def _check_spec(key: str, spec: str, default_attr: str | None, kind: str) -> None:
    """Refuse a malformed spec, or one whose module cannot be found (before importing the module)."""
    check_spec(key, spec)
    try:
        module, _ = parse_spec(spec, default_attr, kind)
    except ValueError as error:
        raise ConfigError(f"config key {key!r}: {error}") from None
    if not module_exists(module):
        raise ConfigError(f"config key {key!r}: no module {module!r} can be imported (from {spec!r}); "
                          "install it or put it on PYTHONPATH")


def check_masks_for_method(masks: int, method: str, n_components: int, key: str = "masks") -> None:
    """OLS needs more masks than components; refused naming the key (`masks`, or for `masks:
    auto` its budget `masks_auto.max_masks`) and the fix."""
    if method == "ols" and masks <= n_components:
        raise ConfigError(f"config key {key!r}: {masks} masks for {n_components} components, but solver.method "
                          f"ols needs more masks than components; use {key} >= {n_components + 1}, "
                          "or solver.method: ridge or lasso")


def check_surrogate_for_run(surrogate: dict, n_components: int, n_examples: int, masks: int,
                            masks_key: str = "masks") -> None:
    """The config's surrogate must fit the prepared run (ProjectedQuadratic.check_sizes): its basis
    comes from the N x n OLS weights, so its rank is at most min(N, n), and its unpenalised linear
    part needs more masks than N + 1; refused naming the key and the fix, before any collection."""
    if surrogate["kind"] is None:
        return
    from coar.solver.surrogate import ProjectedQuadratic

    estimator = ProjectedQuadratic(surrogate["rank"], surrogate["penalty"])
    try:
        estimator.check_sizes(n_components, n_examples)
    except ValueError as error:
        raise ConfigError(f"config key 'surrogate.rank': {error}; use surrogate.rank <= "
                          f"{min(n_components, n_examples)}") from None
    try:
        estimator.check_sizes(n_components, n_examples, masks)
    except ValueError as error:
        raise ConfigError(f"config key {masks_key!r}: {error}; use {masks_key} >= {n_components + 2}, "
                          "or no surrogate") from None


def masks_key(config: dict) -> str:
    """The config key that sets how many training masks a run may collect."""
    return "masks_auto.max_masks" if is_auto(config) else "masks"


def evaluation_alphas(config: dict) -> list[float]:
    """The training alpha and the evaluation alphas (default: half and double the training alpha)."""
    alpha = config["alpha"]
    others = config["evaluation"]["alphas"] or [alpha / 2, min(2 * alpha, 0.99)]
    return sorted({float(f"{a:g}") for a in [alpha, *others]})


def schema_defaults(block: str) -> dict:
    """The schema's defaults of the keys of config block `block` (e.g. "masks_auto")."""
    return {key: node["default"] for key, node in _schema()["properties"][block]["properties"].items()}


@lru_cache(maxsize=1)
def _schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def _check_finite(value: object, key: str) -> None:
    """Refuse NaN and infinity anywhere (YAML's .nan and .inf pass the schema's bounds)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {key!r}: {value!r} is not a finite number; give a number such as those "
                          "config/README.md shows")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for name, sub in items:
        _check_finite(sub, f"{key}.{name}" if key and isinstance(name, str) else f"{key}[{name}]" if key else name)


def _check_job_count(config: dict) -> None:
    """Snakemake plans every job before it runs one (about 10 ms each on a laptop core): a config
    of millions of shards would sit silent for hours before its first job, so it is refused."""
    jobs = collection_jobs(config)
    if jobs > MAX_COLLECTION_JOBS:
        key = "shards" if config["shards"] is not None else "shard_masks"
        raise ConfigError(f"config key {key!r}: {mask_budget(config)} masks make {jobs} collection jobs, more than "
                          f"the {MAX_COLLECTION_JOBS} Snakemake can plan in reasonable time; use at least "
                          f"{-(-mask_budget(config) // MAX_COLLECTION_JOBS)} masks per job (config key 'shard_masks', "
                          f"with 'shards: null') or fewer masks (config key {masks_key(config)!r})")


def _check_rounds(config: dict) -> None:
    """`masks: auto` grows in rounds of whole shards of shard_masks masks."""
    if config["shards"] is not None:
        raise ConfigError("config key 'shards': masks: auto collects in rounds of shards of shard_masks masks; "
                          "set shards: null")
    size, shard = round_masks(config), config["shard_masks"]
    if size % shard:
        raise ConfigError(f"config key 'masks_auto.round_masks': {size} masks per round is not a whole number of "
                          f"shards of {shard} masks (shard_masks); use a multiple of {shard}")


def _check_pass_rows(config: dict) -> None:
    """A forward pass holds masks_per_pass masks of at least one example: at most max_batch rows."""
    per_pass, max_batch = config["masks_per_pass"], config["max_batch"]
    if max_batch != "auto" and per_pass > max_batch:
        raise ConfigError(f"config key 'masks_per_pass': {per_pass} masks in one forward pass make at least {per_pass} "
                          f"rows (one example each), more than max_batch ({max_batch}) allows; use masks_per_pass "
                          f"<= {max_batch}, or a larger max_batch")


def _check_sizes(config: dict) -> None:
    """The least memory and disk any run of this config needs (one example, one component),
    against this machine's; `coar prepare` checks again with the real sizes."""
    try:
        check_needs(RunShape.of_config(config).needs(), Path("results") / config["run"])
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _wants_integer(schema: dict) -> bool:
    """True when the schema allows integers but no other numbers (directly or in each oneOf branch)."""
    branches = schema.get("oneOf", [schema])
    types = {t for b in branches for t in ([b["type"]] if isinstance(b.get("type"), str) else b.get("type", []))}
    return "integer" in types and "number" not in types


def _check_integers(value: object, schema: dict, key: str) -> None:
    """Refuse floats where the schema wants an integer (JSON Schema accepts 400.0 as an integer)."""
    schema = _resolve(schema)
    if _wants_integer(schema) and isinstance(value, float):
        raise ConfigError(f"config key {key!r}: {value!r} must be a whole number written without a decimal point "
                          f"(e.g. {int(value) if value.is_integer() else round(value)})")
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                _check_integers(value[name], sub, f"{key}.{name}" if key else name)


def _check_run_name(run: str) -> None:
    if run in (".", "..") or not RUN_PATTERN.fullmatch(run):
        raise ConfigError(f"config key 'run': {run!r} is not a run name; results go to results/<run>/, so use a "
                          "plain name of letters, digits, '_', '.' and '-' (no slashes, not '.' or '..')")


def _check_task(spec: str) -> None:
    """The task module must import and have the task function; it is not called here."""
    _check_spec("task.spec", spec, DEFAULT_TASK_FUNCTION, "task")
    try:
        import_object(spec, default_attr=DEFAULT_TASK_FUNCTION, kind="task")
    except (ImportError, TypeError, ValueError) as error:
        raise ConfigError(f"config key 'task.spec': {error}; install the module, put it on PYTHONPATH "
                          "or fix the name") from None


def _check_component_preset(name: str) -> None:
    from coar.presets import PRESETS  # imports torch: only for configs that name a preset

    if name not in PRESETS:
        raise ConfigError(f"config key 'components.preset': unknown component preset {name!r}; "
                          f"choose from {sorted(PRESETS)}")


def _check_output_fn(spec: str) -> None:
    """A registry name, or a 'package.module:function' spec whose function exists."""
    check_spec("output_fn", spec)
    if ":" not in spec:
        if spec not in OUTPUT_FUNCTION_NAMES:
            raise ConfigError(f"config key 'output_fn': unknown output function {spec!r}; use one of "
                              f"{list(OUTPUT_FUNCTION_NAMES)} or a 'package.module:function' spec")
        return
    _check_spec("output_fn", spec, None, "output function")
    try:
        import_object(spec, kind="output function")
    except (ImportError, TypeError, ValueError) as error:
        raise ConfigError(f"config key 'output_fn': {error}") from None


def _check_gpu() -> None:
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("config key 'device': 'cuda' was asked for but torch sees no GPU here; "
                          "use device: auto or cpu, or run where a GPU is visible")


def _check_cupy() -> None:
    from coar.solver.backend import get_backend

    try:
        get_backend("cupy")
    except (ImportError, RuntimeError, ValueError) as error:
        raise ConfigError(f"config key 'solver.backend': {error}") from None

"""Checks of a run's configuration beyond its schema (workflow/schemas/config.schema.yaml), run at start-up."""

from __future__ import annotations

from pathlib import Path

from coar.constants import DEFAULT_TASK_FUNCTION, OUTPUT_FUNCTION_NAMES
from coar.spec import module_exists, parse_spec

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key."""


def check_config(config: dict) -> None:
    """Refuse, before any work, values the schema cannot judge (e.g. a task module that does not exist)."""
    _check_spec("task.spec", config["task"]["spec"], DEFAULT_TASK_FUNCTION, "task")
    output_fn = config.get("output_fn")
    if output_fn is not None and output_fn not in OUTPUT_FUNCTION_NAMES:
        if ":" not in output_fn:
            raise ConfigError(f"config key 'output_fn': unknown output function {output_fn!r}; use one of "
                              f"{list(OUTPUT_FUNCTION_NAMES)} or a 'package.module:function' spec")
        _check_spec("output_fn", output_fn, None, "output function")
    if config["shards"] > config["masks"]:
        raise ConfigError(f"config key 'shards': {config['shards']} shards for {config['masks']} masks; "
                          "use at most one shard per mask")


def _check_spec(key: str, spec: str, default_attr: str | None, kind: str) -> None:
    """Refuse a malformed spec, or one whose module cannot be found (without importing the module)."""
    try:
        module, _ = parse_spec(spec, default_attr, kind)
    except ValueError as error:
        raise ConfigError(f"config key {key!r}: {error}") from None
    if not module_exists(module):
        raise ConfigError(f"config key {key!r}: no module {module!r} can be imported (from {spec!r}); "
                          "install it or put it on PYTHONPATH")


def evaluation_alphas(config: dict) -> list[float]:
    """The training alpha and the evaluation alphas (default: half and double the training alpha)."""
    alpha = config["alpha"]
    others = config["evaluation"]["alphas"] or [alpha / 2, min(2 * alpha, 0.99)]
    return sorted({float(f"{a:g}") for a in [alpha, *others]})

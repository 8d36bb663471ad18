"""Checks of a run's configuration beyond its schema (config/schema.yaml), run at start-up."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCHEMA = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key."""


def check_config(config: dict) -> None:
    """Refuse, before any work, values the schema cannot judge (e.g. a task module that does not exist)."""
    spec = config["task"]["spec"]
    module = spec.partition(":")[0]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or the name is malformed
        found = False
    if not found:
        raise ConfigError(f"config key 'task.spec': no module {module!r} can be imported (from {spec!r}); "
                          "install it or put it on PYTHONPATH")
    if config["shards"] > config["masks"]:
        raise ConfigError(f"config key 'shards': {config['shards']} shards for {config['masks']} masks; "
                          "use at most one shard per mask")


def evaluation_alphas(config: dict) -> list[float]:
    """The training alpha and the evaluation alphas (default: half and double the training alpha)."""
    alpha = config["alpha"]
    others = config["evaluation"]["alphas"] or [alpha / 2, min(2 * alpha, 0.99)]
    return sorted({float(f"{a:g}") for a in [alpha, *others]})

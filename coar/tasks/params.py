"""Task parameters: a task's defaults updated by the user's params, unknown names refused."""

from __future__ import annotations


def with_defaults(params: dict, defaults: dict, task: str) -> dict:
    """`defaults` updated by `params`; a key `defaults` does not have is refused, naming the valid ones."""
    unknown = set(params) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {task} params {sorted(unknown)}; valid: {sorted(defaults)}")
    return {**defaults, **params}

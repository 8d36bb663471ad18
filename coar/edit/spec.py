"""One edit of a run's model as the config declares it (config `edits`), checked at start-up.

`EditSpec.from_config` applies the defaults and refuses, naming the edit and the key, whatever
the config alone shows to be wrong: unknown keys, a malformed selector, `rest` as a target, an
`ids` file that does not exist, is not UTF-8 text or names no id, target and reference selecting
the same examples. What needs the run (k larger than the components, an unknown group or label,
unknown ids, a selector matching nothing, a task without validation examples) is refused once
prepare has saved the run, before any collection (coar/edit/checks.py, the workflow's
check_edits rule), and again by the editing steps (coar/edit/steps.py) before any forward pass.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from coar.constants import EDIT_DIRECTIONS, EDIT_SELECTIONS, EDIT_SELECTOR_KEYS

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
AUTO = "auto"


class EditConfigError(ValueError):
    """An edit's configuration is wrong; the message names the edit and the key."""


@dataclass(frozen=True)
class EditSpec:
    """An edit: which examples (`target`, `reference` selectors), which way, how many components."""

    name: str
    target: dict
    reference: dict
    direction: str
    k: int | str = AUTO  # a number, or "auto": chosen on the validation examples
    k_max: int = 64  # largest k of the sweep when k is "auto"
    tolerance: float = 0.05  # most the reference accuracy (validation) may lose
    components: list[str] = field(default_factory=lambda: ["*"])  # module name patterns the edit may ablate
    max_deviation: float = 0.5  # most |realised / predicted - 1| of the target's mean output change
    strict: bool = False  # refuse to write the edited model when a check fails
    selection: str = "verified"  # "verified": each candidate checked on validation; "prefix": the published Welch-t prefix
    goal: float | None = None  # validation target success at which the selection stops (null: the best within tolerance)
    per_example: bool = False  # one edit per target example (e.g. each error fixed on its own), reported together

    @classmethod
    def from_config(cls, edit: dict) -> "EditSpec":
        """The spec of one `edits` entry, defaults applied; refused naming edit and key when wrong."""
        if not isinstance(edit, dict):
            raise EditConfigError(f"config key 'edits': every entry must be a mapping, got {edit!r}")
        name = edit.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
            raise EditConfigError(f"config key 'edits': name {name!r} must be a plain name of letters, digits, "
                                  "'_', '.' and '-' (results go to edits/<name>/)")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(edit) - known)
        if unknown:
            raise EditConfigError(f"edit {name!r}: unknown key(s) {unknown}; the keys are {sorted(known)}")
        missing = [k for k in ("target", "reference", "direction") if k not in edit]
        if missing:
            raise EditConfigError(f"edit {name!r}: key(s) {missing} must be given")
        spec = cls(**edit)
        spec._check()
        return spec

    def _refuse(self, key: str, problem: str) -> EditConfigError:
        return EditConfigError(f"edit {self.name!r}, key {key!r}: {problem}")

    def _check(self) -> None:
        if self.direction not in EDIT_DIRECTIONS:
            raise self._refuse("direction", f"{self.direction!r} is not one of {list(EDIT_DIRECTIONS)}")
        if self.k != AUTO and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise self._refuse("k", f"{self.k!r} must be a whole number >= 1 or 'auto'")
        if isinstance(self.k_max, bool) or not isinstance(self.k_max, int) or self.k_max < 1:
            raise self._refuse("k_max", f"{self.k_max!r} must be a whole number >= 1")
        for key, low in (("tolerance", 0.0), ("max_deviation", 0.0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
                raise self._refuse(key, f"{value!r} must be a number >= {low:g}")
        for key in ("strict", "per_example"):
            if not isinstance(getattr(self, key), bool):
                raise self._refuse(key, f"{getattr(self, key)!r} must be true or false")
        if self.selection not in EDIT_SELECTIONS:
            raise self._refuse("selection", f"{self.selection!r} is not one of {list(EDIT_SELECTIONS)}")
        if self.goal is not None and (isinstance(self.goal, bool) or not isinstance(self.goal, (int, float))
                                      or not 0 < self.goal <= 1):
            raise self._refuse("goal", f"{self.goal!r} must be a fraction in (0, 1] of target examples moved, or null")
        if not isinstance(self.components, list) or not self.components or \
                not all(isinstance(p, str) and p for p in self.components):
            raise self._refuse("components", f"{self.components!r} must be a non-empty list of module name patterns")
        self._check_selector("target", self.target)
        self._check_selector("reference", self.reference)
        if "rest" in self.target:
            raise self._refuse("target.rest", "`rest` means the examples the target does not select: reference only")
        if self.target == self.reference:
            raise self._refuse("reference", f"selects the same examples as the target ({self.target}); "
                                            "use a different selector, e.g. {rest: true}")

    def _check_selector(self, key: str, selector: object) -> None:
        if not isinstance(selector, dict) or not selector:
            raise self._refuse(key, f"{selector!r} must be a mapping of one or more of {list(EDIT_SELECTOR_KEYS)}")
        unknown = sorted(set(selector) - set(EDIT_SELECTOR_KEYS))
        if unknown:
            raise self._refuse(f"{key}.{unknown[0]}", f"unknown selector; use {list(EDIT_SELECTOR_KEYS)}")
        types = {"label": int, "ids": str, "misclassified": bool, "group": str, "rest": bool}
        for name, value in selector.items():
            wanted = types[name]
            if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
                raise self._refuse(f"{key}.{name}", f"{value!r} must be a {wanted.__name__}")
        if selector.get("rest") is False or ("rest" in selector and len(selector) > 1):
            raise self._refuse(f"{key}.rest", "write `rest: true` alone: every example the target does not select")
        if "ids" in selector:
            self._check_ids_file(f"{key}.ids", Path(selector["ids"]))

    def _check_ids_file(self, key: str, path: Path) -> None:
        """An `ids` file must be UTF-8 text naming at least one id (the run's data check the ids)."""
        if not path.is_file():
            raise self._refuse(key, f"{str(path)!r} is not a file (one example id per line)")
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as error:
            raise self._refuse(key, f"{str(path)!r} cannot be read ({error.strerror or error})") from None
        except UnicodeDecodeError as error:
            raise self._refuse(key, f"{str(path)!r} is not UTF-8 text (byte {error.object[error.start]:#04x} at "
                                    f"offset {error.start}); give a text file of example ids, one per line") from None
        if not any(line.strip() for line in text.splitlines()):
            raise self._refuse(key, f"{str(path)!r} is empty: it names no example id (one per line)")

    def as_dict(self) -> dict:
        """The spec with its defaults, as JSON (what plan.json records and the rules pass on)."""
        return asdict(self)


def check_edits(edits: list) -> list[EditSpec]:
    """Every `edits` entry checked (see EditSpec.from_config); edit names must be unique."""
    specs = [EditSpec.from_config(edit) for edit in edits]
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise EditConfigError(f"config key 'edits': edit name(s) {repeated} given more than once; names must be unique")
    return specs

"""Component discovery: the ablatable units of a model and their stable global index.

A `ComponentSet` is an ordered list of groups (one module, one kind of unit); component i of
the model is unit `i - group.start` of the group that holds i. The set saves to and loads
from JSON and has a fingerprint, so later steps can refuse data made with another list.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from torch import nn

from coar.adapters import Site, adapter_for
from coar.constants import COMPONENT_KINDS as KINDS, KIND_PRESETS

log = logging.getLogger("coar")


@dataclass(frozen=True)
class ComponentGroup:
    """Units [start, start + size) of the global index: `size` units of `kind` on `module`."""

    module: str
    kind: str
    size: int
    start: int

    @property
    def stop(self) -> int:
        return self.start + self.size


def component_names(table: Sequence[tuple[str, int, str]]) -> list[str]:
    """A unique name per (module, unit, kind) row of a whole component table: "module[unit]", or
    "module:kind[unit]" where a module holds units of two kinds."""
    kinds: dict[str, set[str]] = {}
    for module, _, kind in table:
        kinds.setdefault(module, set()).add(kind)
    return [f"{module}:{kind}[{unit}]" if len(kinds[module]) > 1 else f"{module}[{unit}]"
            for module, unit, kind in table]


class ComponentSet:
    """The ordered components of a model: global index <-> (module name, unit, kind)."""

    def __init__(self, groups: Sequence[ComponentGroup]):
        self.groups = tuple(groups)
        expected = 0
        for g in self.groups:
            if g.start != expected or g.size < 1:
                raise ValueError(f"component groups must tile the index without gaps: {g} after {expected}")
            expected = g.stop
        self._starts = np.array([g.start for g in self.groups], dtype=np.int64)

    def __len__(self) -> int:
        return self.groups[-1].stop if self.groups else 0

    def __repr__(self) -> str:
        kinds = {}
        for g in self.groups:
            kinds[g.kind] = kinds.get(g.kind, 0) + g.size
        return f"ComponentSet({len(self)} components in {len(self.groups)} groups: {kinds})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ComponentSet) and self.groups == other.groups

    def locate(self, index: int) -> tuple[str, int, str]:
        """(module name, unit index within the module, kind) of global component `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"component {index} out of range for {len(self)} components")
        g = self.groups[int(np.searchsorted(self._starts, index, side="right")) - 1]
        return g.module, index - g.start, g.kind

    def index(self, module: str, unit: int, kind: str) -> int:
        """Global index of `unit` of `kind` on `module`."""
        for g in self.groups:
            if g.module == module and g.kind == kind:
                if not 0 <= unit < g.size:
                    raise IndexError(f"{module} has {g.size} {kind} units, not unit {unit}")
                return g.start + unit
        raise KeyError(f"no {kind} components on module {module!r}")

    def without(self, drop: Iterable[tuple[str, str]]) -> "ComponentSet":
        """The set without the groups whose (module, kind) is in `drop`, renumbered in order."""
        drop = set(drop)
        kept, start = [], 0
        for g in self.groups:
            if (g.module, g.kind) not in drop:
                kept.append(ComponentGroup(g.module, g.kind, g.size, start))
                start += g.size
        if not kept:
            raise ValueError("no components are left once every inexact group is dropped")
        return ComponentSet(kept)

    def table(self) -> list[tuple[str, int, str]]:
        """One (module, unit, kind) row per component, in global index order."""
        return [(g.module, u, g.kind) for g in self.groups for u in range(g.size)]

    def names(self) -> list[str]:
        """The one name of each component, in global index order, on every surface (the command
        line, the Python API, exports, the explorer, edit files; each accepts it as input)."""
        return component_names(self.table())

    def layers(self) -> list[int]:
        """Each component's layer, in global index order: its module's position among the modules
        that hold components, 0 nearest the input (not a transformer block's index)."""
        table = self.table()
        position = {m: i for i, m in enumerate(dict.fromkeys(m for m, _, _ in table))}
        return [position[m] for m, _, _ in table]

    @property
    def fingerprint(self) -> str:
        """sha256 over the ordered (module, kind, size) groups."""
        payload = json.dumps([[g.module, g.kind, g.size] for g in self.groups]).encode()
        return hashlib.sha256(payload).hexdigest()

    def to_json(self) -> str:
        return json.dumps({"groups": [asdict(g) for g in self.groups], "fingerprint": self.fingerprint}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "ComponentSet":
        data = json.loads(text)
        components = cls([ComponentGroup(**g) for g in data["groups"]])
        if data.get("fingerprint", components.fingerprint) != components.fingerprint:
            raise ValueError("component list is corrupt: its stored fingerprint does not match its groups")
        return components

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "ComponentSet":
        """The component list saved at `path`; a file that is not one is refused, naming it."""
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a component list written by coar ({type(error).__name__}: {error}); "
                             "delete it and rerun the prepare step") from None


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def site_module_name(name: str, child: str) -> str:
    """Name of the module a site's units belong to: the owner `name`, or its child `child`."""
    return f"{name}.{child}" if name and child else (name or child)


def weight_sharers(model: nn.Module) -> Callable[[nn.Module], list[str]]:
    """For modules of `model`: the names of the modules outside it that use one of its Parameters.

    A module object used twice is not tied to itself: its hook and its weights cover every use.
    """
    names = {id(m): n for n, m in model.named_modules()}
    users: dict[int, set[int]] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            users.setdefault(id(p), set()).add(id(m))

    def sharers(owner: nn.Module) -> list[str]:
        inside = {id(m) for m in owner.modules()}
        return sorted(names[u] for u in {u for p in owner.parameters() for u in users[id(p)]} - inside)

    return sharers


def _register_library_adapters(model: nn.Module) -> None:
    """Register the Hugging Face adapters when `model` holds transformers modules.

    Lazy: transformers is imported only when the model already uses it.
    """
    if any(type(m).__module__.startswith("transformers.") for m in model.modules()):
        import coar.hf_adapters  # noqa: F401  (importing registers the adapters)


def iter_sites(model: nn.Module) -> Iterable[tuple[str, nn.Module, Site]]:
    """(owner module name, owner module, site) for every site of every adapted module."""
    _register_library_adapters(model)
    claimed: set[str] = set()
    for name, module in model.named_modules():
        if name in claimed:
            continue
        adapter = adapter_for(module)
        if adapter is None:
            continue
        claimed.update(site_module_name(name, c) for c in adapter.claimed_children(module))
        for site in adapter.sites(module):
            yield name, module, site


def discover(
    model: nn.Module,
    kinds: str | Sequence[str] = ("conv", "linear", "head"),
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
) -> ComponentSet:
    """Find the ablatable units of `model`.

    `kinds` is a list of unit kinds (see KINDS) or a preset name ("weight_rows", "all");
    `include` and `exclude` are glob patterns on module names (e.g. "layer*.conv*",
    "*downsample*"); a group is kept when its module matches some include pattern and no
    exclude pattern. The order is the model's module order, so the index is stable.

    Output layers whose weights are tied to an embedding (an `lm_head` sharing it) cannot be
    ablated exactly; they are left out with a logged note unless an include pattern other than
    "*" names them, in which case the checks downstream refuse them, as any other tied weights.
    """
    kinds = KIND_PRESETS[kinds] if isinstance(kinds, str) and kinds in KIND_PRESETS else kinds
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown component kind(s) {unknown}; choose from {list(KINDS)} or a preset {list(KIND_PRESETS)}")
    groups: list[ComponentGroup] = []
    start = 0
    sharers = weight_sharers(model)
    explicit = [p for p in include if p != "*"]
    sites: list[tuple[str, Site]] = []
    for name, module, site in iter_sites(model):
        module_name = site_module_name(name, site.child)
        sites.append((module_name, site))
        if site.kind not in kinds or not _matches(module_name, include) or _matches(module_name, exclude):
            continue
        embeddings = [n for n in sharers(module) if isinstance(model.get_submodule(n), nn.Embedding)]
        if embeddings and not _matches(module_name, explicit):
            log.info("components: left out %s (%s): its weights are tied to the embedding %s; include it by name "
                     "to have it refused instead", module_name, site.kind, embeddings)
            continue
        groups.append(ComponentGroup(module_name, site.kind, site.size, start))
        start += site.size
    if not groups:
        other = sorted({site.kind for m, site in sites if _matches(m, include) and not _matches(m, exclude)})
        hint = (f"; the patterns match units of kind(s) {other} only: add them to the kinds" if other
                else _closest_modules(sites, kinds, include))
        raise ValueError(f"no components of kinds {list(kinds)} matched include={list(include)} "
                         f"exclude={list(exclude)} in {type(model).__name__}{hint}")
    return ComponentSet(groups)


def _closest_modules(sites: list[tuple[str, Site]], kinds: Sequence[str], patterns: Sequence[str]) -> str:
    """"; closest modules ...": the module names of `kinds` nearest to the patterns (or the first few)."""
    names = list(dict.fromkeys(m for m, site in sites if site.kind in kinds)) or list(dict.fromkeys(m for m, _ in sites))
    if not names:
        return "; it has no modules coar can ablate (docs/exactness.md)"
    close = list(dict.fromkeys(c for p in patterns for c in difflib.get_close_matches(p, names, n=5, cutoff=0.4)))
    shown = close or names[:8]
    more = "" if close or len(names) <= 8 else f" (of {len(names)})"
    return f"; {'closest' if close else 'its'} modules{more}: {', '.join(shown)}"

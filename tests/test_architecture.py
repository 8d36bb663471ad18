"""The package's import structure: no import cycles, and no module using another module's
private (_name) names. Read from the source (ast over coar/**/*.py), so it covers code that
no test runs; imports inside functions count too (a deferred import hides a cycle, it does not
remove it)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

@dataclass(frozen=True)
class Import:
    """`importer` imports package module `target` (and takes `name` from it, for `from` imports of a non-module)."""

    importer: str
    target: str
    name: str | None
    line: int
    module_level: bool


def modules_of(root: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} of every module of `package`, which lives in `root / package`."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


class _Walker(ast.NodeVisitor):
    """Collects the package imports of one module, and the private attributes it reads of package modules."""

    def __init__(self, module: str, modules: dict[str, Path], package: str):
        self.module, self.modules, self.package = module, modules, package
        self.is_package = modules[module].name == "__init__.py"
        self.depth = 0  # > 0 inside a function body
        self.imports: list[Import] = []
        self.aliases: dict[str, str] = {}  # local name -> package module it is bound to


    def in_package(self, name: str) -> bool:
        return name == self.package or name.startswith(self.package + ".")

    def add(self, target: str, name: str | None, node: ast.AST) -> None:
        self.imports.append(Import(self.module, target, name, node.lineno, self.depth == 0))

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if self.in_package(alias.name):
                self.add(alias.name, None, node)
                local = alias.asname or alias.name.partition(".")[0]
                self.aliases[local] = alias.name if alias.asname else alias.name.partition(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.module if self.is_package else self.module.rpartition(".")[0]
            for _ in range(node.level - 1):
                anchor = anchor.rpartition(".")[0]
            base = f"{anchor}.{base}" if base else anchor
        if not self.in_package(base):
            return
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in self.modules:
                self.add(submodule, None, node)
                self.aliases[alias.asname or alias.name] = submodule
            else:
                self.add(base, alias.name, node)

    def private_attributes(self, tree: ast.AST) -> set[tuple[str, str, int]]:
        """(module, name, line) of each private name read as an attribute of another package
        module (`alias._name`, `pkg.mod._name`); call after visiting, when every alias is known."""
        found = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            chain, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                chain.insert(0, value.attr)
                value = value.value
            if not (isinstance(value, ast.Name) and value.id in self.aliases):
                continue
            owner = self.aliases[value.id]
            for part in chain:
                if f"{owner}.{part}" not in self.modules:
                    if is_private(part) and owner != self.module:
                        found.add((owner, part, node.lineno))
                    break
                owner = f"{owner}.{part}"
        return found


def walk(root: Path, package: str) -> tuple[list[Import], set[tuple[str, str, int]]]:
    """Every package import of every module of `package`, and every private name a module takes
    from another package module: {(importer, "module.name", line)}."""
    modules = modules_of(root, package)
    imports, private = [], set()
    for module, path in modules.items():
        walker = _Walker(module, modules, package)
        tree = ast.parse(path.read_text(), str(path))
        walker.visit(tree)
        imports += walker.imports
        # A package's own modules may share its private members (e.g. the compiled coar._C,
        # loaded only by coar.ops); any other module's private names are off limits.
        own_package = module if walker.is_package else module.rpartition(".")[0]
        for i in walker.imports:
            owner, name = (i.target, i.name) if i.name is not None else i.target.rpartition(".")[::2]
            if is_private(name) and owner not in (module, own_package):
                private.add((module, f"{owner}.{name}", i.line))
        private |= {(module, f"{owner}.{name}", line) for owner, name, line in walker.private_attributes(tree)}
    return imports, private


def cycles(imports: list[Import]) -> list[list[str]]:
    """The import cycles: one list of modules per strongly connected group of more than one module."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        if i.target != i.importer:
            graph.setdefault(i.importer, set()).add(i.target)
            graph.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while (w := stack.pop()) != v:
                group.append(w)
            group.append(v)
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return groups


IMPORTS, PRIVATE = walk(REPO, "coar")


def test_the_walk_sees_the_whole_package():
    importers = {i.importer for i in IMPORTS}
    assert {"coar.cli", "coar.steps", "coar.solver", "coar.solver.estimators", "coar.tasks.digits"} <= importers
    assert any(i.importer == "coar.solver.estimators" and i.target == "coar.solver.backend" for i in IMPORTS)
    assert any(i.importer == "coar.cli" and i.target == "coar.steps" and not i.module_level for i in IMPORTS)


def test_the_package_has_no_import_cycles():
    found = cycles(IMPORTS)
    detail = [[f"{i.importer}:{i.line} -> {i.target}" for i in IMPORTS if {i.importer, i.target} <= set(group)
               and i.importer != i.target] for group in found]
    assert not found, f"import cycles: {detail}"


def test_no_module_takes_private_names_of_another():
    lines = sorted(f"{importer}:{line} uses {name}" for importer, name, line in PRIVATE)
    assert not lines, "private names used across modules (make them public or keep them inside): " + "; ".join(lines)


# The checks themselves, on a small package written for the purpose.
FAKE = {
    "pkg/__init__.py": "from pkg.a import public\n",
    "pkg/a.py": "import pkg.b\n\ndef public():\n    from pkg import c\n    return c\n\n_secret = 1\n",
    "pkg/b.py": "from . import a\nfrom .a import _secret\n",
    "pkg/c.py": "import pkg.sub.d as d\nfrom pkg.sub import _own\n\ndef f():\n    return d._hidden, pkg_dot()\n\ndef pkg_dot():\n    import pkg\n    return pkg.a._secret\n",
    "pkg/sub/__init__.py": "",
    "pkg/sub/d.py": "from .. import c\nfrom . import _own\n_hidden = 2\n",
    "pkg/sub/_own.py": "",
}


@pytest.fixture
def fake(tmp_path):
    for name, text in FAKE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return walk(tmp_path, "pkg")


def test_relative_absolute_and_function_level_imports_are_resolved(fake):
    imports, _ = fake
    edges = {(i.importer, i.target, i.module_level) for i in imports}
    assert edges == {
        ("pkg", "pkg.a", True), ("pkg.a", "pkg.b", True), ("pkg.a", "pkg.c", False),
        ("pkg.b", "pkg.a", True), ("pkg.c", "pkg.sub.d", True), ("pkg.c", "pkg.sub._own", True), ("pkg.c", "pkg", False),
        ("pkg.sub.d", "pkg.c", True), ("pkg.sub.d", "pkg.sub._own", True),
    }


def test_cycles_are_found_through_module_and_function_level_imports(fake):
    assert cycles(fake[0]) == [["pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.sub.d"]]


def test_private_names_are_found_in_from_imports_and_attribute_chains(fake):
    assert {(importer, name) for importer, name, _ in fake[1]} == {
        ("pkg.b", "pkg.a._secret"), ("pkg.c", "pkg.sub.d._hidden"), ("pkg.c", "pkg.a._secret"),
        ("pkg.c", "pkg.sub._own"),
    }

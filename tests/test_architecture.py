"""The package's layer rules (docs/architecture.md), checked on the source by an AST walk of every import, the lazy
ones inside functions included: each top-level unit (subpackage or module) imports only units of its own layer or
of layers below, and there is no import cycle, neither between units nor between modules."""
import ast
import re
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "openmm_cgflow"

DOC = PACKAGE.parent / "docs" / "architecture.md"


def read_layers() -> List[Set[str]]:
    """The layer table of docs/architecture.md, bottom to top: the backticked unit names of each row."""
    rows = [line for line in DOC.read_text().splitlines() if re.match(r"\| \d+ ", line)]
    return [set(re.findall(r"`([\w.]+)`", row.split("|")[2])) for row in rows]


#: bottom to top; a unit may import its own layer and the layers below it, never one above
LAYERS: List[Set[str]] = read_layers()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> Set[str]:
    """Package modules ``path`` imports (absolute names; ``from pkg import name`` counts as pkg.name when that is a
    module, else pkg)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text())
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                 for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in type_only:  # ``if TYPE_CHECKING:`` imports never run
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "openmm_cgflow" or target.startswith("openmm_cgflow."):
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "openmm_cgflow")
    found.discard(name)
    return {m for m in found if m in MODULES}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


MODULES: Dict[str, Path] = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH: Dict[str, Set[str]] = {name: imports_of(path) for name, path in MODULES.items()}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(unit_name: str) -> int:
    for k, units in enumerate(LAYERS):
        if unit_name in units:
            return k
    raise AssertionError(f"unit '{unit_name}' has no layer in docs/architecture.md / LAYERS: add it")


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One cycle of ``graph`` as a list of nodes (empty if there is none)."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_documented_layers_are_read():
    assert len(LAYERS) == 6 and "systems" in LAYERS[1] and "dynamics" in LAYERS[0]


def test_every_unit_has_a_layer():
    for name in MODULES:
        layer(unit(name))


def test_no_unit_imports_a_layer_above_it():
    violations = sorted(f"{module} -> {target}" for module, targets in GRAPH.items() for target in targets
                        if layer(unit(target)) > layer(unit(module)))
    assert not violations, "imports from a higher layer:\n" + "\n".join(violations)


def test_systems_import_only_the_foundation():
    above = sorted(f"{module} -> {target}" for module, targets in GRAPH.items() if unit(module) == "systems"
                   for target in targets if unit(target) != "systems" and layer(unit(target)) > 0)
    assert not above, "\n".join(above)


def test_no_import_cycle_between_units():
    units: Dict[str, Set[str]] = {}
    for module, targets in GRAPH.items():
        units.setdefault(unit(module), set()).update(unit(t) for t in targets if unit(t) != unit(module))
    assert find_cycle(units) == []


def test_no_import_cycle_between_modules():
    assert find_cycle(GRAPH) == []


@pytest.mark.parametrize("graph, cyclic", [({"a": {"b"}, "b": {"c"}, "c": set()}, False), ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True)])
def test_the_cycle_finder_finds_cycles(graph, cyclic):
    assert bool(find_cycle(graph)) == cyclic


def test_the_walk_sees_lazy_imports():
    """systems.base imports its starting data inside a method: the walk must see it (or the checks above prove nothing)."""
    assert "openmm_cgflow.systems.starting_data" in GRAPH["openmm_cgflow.systems.base"]

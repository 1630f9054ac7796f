"""jaxbrain's packages form layers: no two of them import each other, directly or through
others, function-local imports included (read off the source with ``ast``)."""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxbrain")
# Entry points may import anything (they sit above every layer).
ENTRY_POINTS = {"jaxbrain/convert/__main__.py", "jaxbrain/data/__main__.py", "jaxbrain/demo.py",
                "jaxbrain/study.py", "jaxbrain/aot.py"}
# Floors from the bottom; a unit may import only its own floor's other units or lower floors.
FLOORS = {
    "models": 0, "objectives": 0, "data": 0, "parallel": 0, "metrics": 0,
    "runs": 1, "inference": 1, "convert": 1,
    "training": 2, "evaluation": 2,
}


def _unit(module: str) -> str | None:
    """The top-level unit of a jaxbrain module ('jaxbrain.training.loop' -> 'training')."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "jaxbrain" else None


def _imports(path: str, package: str) -> set[str]:
    """Every jaxbrain module named by an import statement anywhere in the file."""
    tree = ast.parse(open(path).read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("jaxbrain.")}


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, os.path.dirname(ROOT))
            if rel in ENTRY_POINTS:
                continue
            module = rel[:-3].replace(os.sep, ".")
            package = module if name == "__init__.py" else module.rsplit(".", 1)[0]
            unit = _unit(module.removesuffix(".__init__"))
            if unit is None:
                continue
            for target in _imports(path, package.removesuffix(".__init__")):
                other = _unit(target)
                if other and other != unit:
                    edges.setdefault(unit, set()).add(other)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return trail + [node, nxt]
            if not state.get(nxt):
                found = visit(nxt, trail + [node])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(edges):
        if not state.get(node):
            found = visit(node, [])
            if found:
                return found
    return None


def test_no_import_cycle_between_packages():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_packages_import_only_their_floor_or_below():
    edges = _graph()
    unknown = sorted((set(edges) | {t for ts in edges.values() for t in ts}) - set(FLOORS))
    assert not unknown, f"units without a floor in this test: {unknown}"
    upward = sorted(f"{a} (floor {FLOORS[a]}) -> {b} (floor {FLOORS[b]})"
                    for a, targets in edges.items() for b in targets if FLOORS[b] > FLOORS[a])
    assert not upward, "imports from a higher floor: " + "; ".join(upward)


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"a"}}, True),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ({"a": {"b"}, "b": {"c"}}, False),
])
def test_the_cycle_finder_finds_cycles(edges, expected):
    assert (_cycle(edges) is not None) == expected

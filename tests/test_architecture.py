"""The package's wings and the one-way flow of imports between them (read from the source)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pipeline"

# wing → the wings it may import (besides itself)
ALLOWED = {
    "core": set(),
    "model": {"core"},
    "job": {"core", "model"},
    "results": {"core"},
    "synthetic": {"core"},
    # the local pages: browse a run (results), try settings (the job's sources and model)
    "web": {"core", "model", "job", "results"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ``pipeline`` module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "pipeline"}


def graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports (names that are modules, not attributes)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {
        name: {target for target in imports_of(path) if target in modules and target != name}
        for name, path in modules.items()
    }


def wing(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def test_every_module_lives_in_a_wing():
    top_level = {m for m in graph() if m.count(".") == 1 and wing(m) not in ALLOWED}
    assert top_level == {"pipeline.cli", "pipeline.dataset"}, "only the CLI and public API"


def test_imports_flow_one_way_between_wings():
    wrong = [
        f"{source} imports {target}"
        for source, targets in graph().items()
        if wing(source) in ALLOWED
        for target in targets
        if wing(target) != wing(source) and wing(target) not in ALLOWED[wing(source)]
    ]
    assert not wrong


def test_nothing_imports_the_cli_and_the_public_api_is_a_facade():
    modules = graph()
    assert not [m for m, targets in modules.items() if "pipeline.cli" in targets]
    assert modules["pipeline.dataset"] == {"pipeline.results.dataset"}


def test_no_module_imports_one_that_imports_it_back():
    """No cycle of any length in the module graph (depth-first search)."""
    modules = graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(modules[module]):
            if state.get(target) == "open":
                cycle = path[path.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(modules):
        if module not in state:
            visit(module, [module])

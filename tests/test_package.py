"""The package's shape: stages import downward only (no cycles), and the plan stays free of executors."""

import ast
import pathlib

import hyperattn

ROOT = pathlib.Path(hyperattn.__file__).parent


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path, modules: set[str]) -> set[str]:
    """hyperattn modules that ``path`` imports anywhere in its body (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in ROOT.rglob("*.py")}
    return {name: imports_of(path, set(paths)) - {name} for name, path in paths.items()}


def is_inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_no_import_cycles():
    graph = import_graph()
    # a package's __init__ may re-export its own submodules; other edges must form no cycle
    edges = {name: {dep for dep in deps if not is_inside(dep, name)} for name, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(name, path):
        state[name] = 1
        for dep in sorted(edges[name]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


def test_the_plan_imports_no_executor_and_the_library_no_cli():
    graph = import_graph()
    for name, deps in graph.items():
        if is_inside(name, "hyperattn.plan"):
            assert not any(is_inside(dep, "hyperattn.executors") for dep in deps), name
        if not is_inside(name, "hyperattn.cli"):
            assert not any(is_inside(dep, "hyperattn.cli") for dep in deps), name

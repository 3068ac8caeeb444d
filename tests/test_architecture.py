"""The package's shape, read from its source with ast (nothing is imported): modules import
each other in one direction, command-line code stays in ppl_vae.commands, functions fit on
a screen."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ppl_vae"
MAX_FUNCTION_LINES = 60


def module_files():
    """Dotted module name -> path, for every module of the package."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = path
    return files


def imported_modules(name, path, known):
    """The package's modules that ``name`` imports, at any depth of its code."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            candidates = {base} | {f"{base}.{alias.name}" for alias in node.names}
        else:
            continue
        found |= {c for c in candidates if c in known and c != name}
    return found


def import_graph():
    files = module_files()
    graph = {name: imported_modules(name, path, files) for name, path in files.items()}
    # A package's __init__ re-exporting its own modules is not a dependency between
    # modules; the edges from a package to its children (and back) are left out.
    return {name: {t for t in targets if not (t.startswith(name + ".") or
                                              name.startswith(t + "."))}
            for name, targets in graph.items()}


def find_cycle(graph):
    """One cycle of the directed graph as a list of nodes, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle_and_none_where_there_is_none():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_relative_and_function_level_imports():
    graph = import_graph()
    assert "ppl_vae.inference.loop" in graph["ppl_vae.build"]
    # commands import the library lazily, inside functions
    assert "ppl_vae.build" in graph["ppl_vae.commands"]


@pytest.mark.parametrize("name", sorted(n for n in module_files()
                                        if not n.startswith("ppl_vae.commands")))
def test_library_modules_import_no_argparse(name):
    tree = ast.parse(module_files()[name].read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "argparse" not in imported, f"{name} imports argparse; move it to ppl_vae.commands"


def _docstring_lines(node):
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and \
            isinstance(first.value.value, str):
        return first.end_lineno - first.lineno + 1
    return 0


def test_library_functions_fit_on_a_screen():
    """Signature and code, docstrings not counted."""
    long = []
    for name, path in module_files().items():
        if name.startswith("ppl_vae.commands"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1 - _docstring_lines(node)
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + ", ".join(long)

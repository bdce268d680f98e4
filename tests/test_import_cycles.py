"""No import cycles among grpo_jax modules: the imports of every module, parsed with ast, form an acyclic graph.
Every import counts, at module level and inside functions alike (a late import inside a function is how a cycle
hides: a loss-presets module importing losses while a loss imported it back). `import a.b` / `from a.b import c`
is an edge to a.b, or to a.b.c when that is a module; the parent package's own __init__ is not an edge, as for
every import checker."""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "grpo_jax"


def module_files(root: str, package: str) -> dict:
    """module name -> file, for every .py under root/package."""
    out = {}
    for directory, _, files in os.walk(os.path.join(root, package)):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(module: str, level: int, current: str, is_package: bool) -> str:
    if not level:
        return module
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def module_imports(tree: ast.Module, current: str, is_package: bool, known: set) -> set:
    """Modules of `known` imported anywhere in the module (top level, under if / try, inside functions)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node.module or "", node.level, current, is_package)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m in known and m != current}


def import_graph(root: str = REPO, package: str = PACKAGE) -> dict:
    files = module_files(root, package)
    known = set(files)
    graph = {}
    for name, path in files.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        graph[name] = module_imports(tree, name, path.endswith("__init__.py"), known)
    return graph


def find_cycle(graph: dict):
    """One cycle as a list of modules [a, b, ..., a], or None."""
    state = {}
    stack = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
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


def test_no_import_cycles_in_grpo_jax():
    graph = import_graph()
    assert len(graph) > 30 and "grpo_jax.registry" in graph and graph["grpo_jax.config"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_registry_imports_nothing_from_grpo_jax():
    assert import_graph()["grpo_jax.registry"] == set()
    with open(os.path.join(REPO, PACKAGE, "registry.py")) as f:
        assert "grpo_jax" not in "".join(line for line in f if line.lstrip().startswith(("import", "from")))


@pytest.mark.parametrize("layout, cycle", [
    ({"a.py": "from pkg import b\n", "b.py": "import pkg.c\n", "c.py": "from . import a\n"},
     ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]),
    ({"a.py": "from pkg.b import x\n", "b.py": "def f():\n    from pkg import a\n"}, ["pkg.a", "pkg.b", "pkg.a"]),
    ({"a.py": "from pkg.b import x\n", "b.py": "import pkg\nfrom pkg import c\n", "c.py": ""}, None),
    ({"a.py": "try:\n    from .b import x\nexcept ImportError:\n    pass\n", "b.py": "from .a import y\n"},
     ["pkg.a", "pkg.b", "pkg.a"]),
])
def test_the_checker_finds_cycles(tmp_path, layout, cycle):
    """The checker itself: a cycle through `from pkg import mod`, `import pkg.mod`, relative imports, a try block
    or a function-level import is found; importing the parent package is not an edge."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    for name, text in layout.items():
        (tmp_path / "pkg" / name).write_text(text)
    assert find_cycle(import_graph(str(tmp_path), "pkg")) == cycle

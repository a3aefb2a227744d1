"""The house's rules, read from the code itself (docs/design.md, "Architecture"): spark_nn's imports form
no circle, counting imports inside functions, and point down the floors only."""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "spark_nn")

# floor of each part of the package; a module may import only its own floor and those below
FLOORS = [("spark_nn._native", 0), ("spark_nn._kernels", 0), ("spark_nn.threads", 0), ("spark_nn", 0),
          ("spark_nn.kernels", 1), ("spark_nn.nn", 2), ("spark_nn.ml", 3),
          ("spark_nn.datasets", 4), ("spark_nn.demo", 4)]


def floor_of(module):
    """The floor of the longest FLOORS prefix naming module or a package above it."""
    best = max((p for p, _ in FLOORS if module == p or module.startswith(p + ".")), key=len)
    return dict(FLOORS)[best]


def package_modules(root=ROOT, package="spark_nn"):
    """{module name: (path, is_package)} of every .py file under root, and of the compiled
    modules' .pyx sources (path None: their imports are C's)."""
    out = {}
    for folder, _, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        parts = [package] + ([] if rel == "." else rel.split(os.sep))
        for name in files:
            if name.endswith(".py"):
                is_pkg = name == "__init__.py"
                out[".".join(parts + ([] if is_pkg else [name[:-3]]))] = (os.path.join(folder, name), is_pkg)
            elif name.endswith(".pyx"):
                out[".".join(parts + [name[:-4]])] = (None, False)
    return out


def imports_of(module, path, is_pkg, known):
    """The package's modules that module imports anywhere in its file (functions included):
    'import a.b' names a.b; 'from a import b' names a.b when that is a module, else a."""
    here = module if is_pkg else module.rsplit(".", 1)[0]
    found = set()
    if path is None:
        return found
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = here.split(".")[:len(here.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(n for n in names if n in known and n != module)
    return found


def import_graph():
    mods = package_modules()
    return {m: imports_of(m, path, is_pkg, mods) for m, (path, is_pkg) in mods.items()}


def find_cycle(graph):
    """One import circle as a list [a, b, ..., a], or None (depth-first search, three colours)."""
    colour, stack = {}, []

    def visit(node):
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in colour:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if node not in colour:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_cycle_finder_finds_circles_and_only_circles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_of_reads_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg import b\n    from . import c\n    import pkg.d as d\n")
    for name in "bcd":
        (pkg / f"{name}.py").write_text("from pkg.a import f\n")
    mods = package_modules(str(pkg), "pkg")
    path, is_pkg = mods["pkg.a"]
    assert imports_of("pkg.a", path, is_pkg, mods) == {"pkg.b", "pkg.c", "pkg.d"}
    graph = {m: imports_of(m, p, i, mods) for m, (p, i) in mods.items()}
    assert find_cycle(graph)[0] == "pkg.a"


def test_no_module_of_spark_nn_takes_part_in_an_import_circle():
    graph = import_graph()
    assert {"spark_nn.ml.training.trainer", "spark_nn.nn.model", "spark_nn.threads", "spark_nn._kernels"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_imports_point_down_the_floors():
    upward = [(m, n) for m, deps in import_graph().items() for n in deps if floor_of(n) > floor_of(m)]
    assert not upward, f"imports that point up a floor: {upward}"


@pytest.mark.parametrize("module", ["spark_nn._native", "spark_nn.threads", "spark_nn.kernels", "spark_nn.nn"])
def test_only_the_spark_floor_imports_pyspark(module):
    mods = package_modules()
    for name, (path, _) in mods.items():
        if path and (name == module or name.startswith(module + ".")):
            tree = ast.parse(open(path).read(), path)
            used = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            used |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            assert not any(u == "pyspark" or u.startswith("pyspark.") for u in used), name

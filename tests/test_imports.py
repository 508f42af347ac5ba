"""The package's import graph: one way from the converter to the package, and no cycles.

Read from the source. Cycles are looked for among all imports, those inside functions included (cli.py
imported batch.py in a function while batch.py imported cli.py at the top: a cycle that only the order of
calls kept from failing). A submodule's import of its own package is left out: Python imports a package
before its submodules, so that edge never waits on anything.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("git_scratch", "weights_convert")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Project modules `path` imports (at module level only, or anywhere), with the packages that loads."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text())
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y, from . import y
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            parts = t.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    project = {module_name(p) for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py")}
    return {m for m in found if m in project and m != name and m != package}


def graph(top_level_only: bool = False) -> dict[str, set[str]]:
    return {module_name(p): imports(p, top_level_only) for pkg in PACKAGES for p in sorted((ROOT / pkg).glob("*.py"))}


def test_the_package_never_imports_the_converter_at_module_level():
    g = graph(top_level_only=True)
    assert {m: sorted(d) for m, d in g.items() if m.startswith("git_scratch") and
            any(x.startswith("weights_convert") for x in d)} == {}


def test_there_are_no_import_cycles():
    g, cycles = graph(), []

    def visit(m, path):
        for d in sorted(g[m]):
            if d in path:
                cycles.append(path[path.index(d):] + [d])
            elif d not in done:
                visit(d, path + [d])
        done.add(m)

    done: set[str] = set()
    for m in sorted(g):
        if m not in done:
            visit(m, [m])
    assert cycles == []


def test_the_graph_sees_imports():  # the two tests above would pass on an empty graph
    g = graph()
    assert {"git_scratch.constants", "git_scratch.results"} <= g["git_scratch.batch"]
    assert "git_scratch.cli" not in g["git_scratch.batch"]
    assert "weights_convert.__main__" in g["git_scratch.cli"]  # in run_convert, when the command runs
    assert {"git_scratch", "git_scratch.config", "git_scratch.model"} <= g["weights_convert.convert"]

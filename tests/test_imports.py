"""The package's import graph: imports point one way, down the house, and never in a circle.

    cli/                                  the command line (argparse lives here and nowhere else)
     └▶ training/  evaluation/  convert/   the loop and checkpoints; metrics, eval, demo; checkpoint conversion
         └▶ data/                          the shapes task, datasets from disk, batches
             └▶ generation/  preprocessing/  decoding over the cache; pixels, tokens, frames
                 └▶ the model files at the package root (config, mask, layers, vision, decoder, model, ...)

Read from the source. Every import counts, those inside functions included (cli.py once imported batch.py in
a function while batch.py imported cli.py at the top: a cycle that only the order of calls kept from
failing). One exception, named below: `GIT.generate`, a convenience, imports generation when called.
A submodule's import of its own package is left out of the cycle search: Python imports a package before its
submodules, so that edge never waits on anything. `git_scratch/__init__.py` is the public face that
re-exports from every floor; nothing inside the package imports it.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "git_scratch"
FLOORS = {"cli": 5, "pipeline": 5, "serve": 4, "sources": 4, "training": 3, "evaluation": 3, "convert": 3, "export": 3, "explain": 3, "data": 2,
          "generation": 1, "preprocessing": 1}
ALLOWED_UP = {("git_scratch.model", "git_scratch.generation.generate"),  # GIT.generate, imported when called
              ("git_scratch.model", "git_scratch.preprocessing.processor"),  # GIT.generate(images)
              # load(NAME) and Processor.from_pretrained(NAME) resolve the name when called (it may convert)
              ("git_scratch.load", "git_scratch.sources"),
              ("git_scratch.preprocessing.processor", "git_scratch.sources"),
              ("git_scratch.convert.__main__", "git_scratch.cli.main")}  # python -m git_scratch.convert: an entry point


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
MODULE_NAMES = set(MODULES)


def room(module: str) -> str:
    """The folder a module lives in below the package root ("" for the model files at the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in FLOORS) else ""


def floor(module: str) -> int:
    return FLOORS.get(room(module), 0)


def imports(path: Path) -> set[str]:
    """Project modules `path` imports, anywhere in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y, from . import y
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from a.b import c`: the module a.b.c where c is one, else a.b itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULE_NAMES else base for a in node.names]
        else:
            continue
        found |= set(targets)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {m: imports(p) for m, p in MODULES.items()}


def test_imports_point_down_the_house_never_up_or_sideways():
    wrong = []
    for m, deps in GRAPH.items():
        if m == "git_scratch":
            continue
        for d in deps:
            if d == "git_scratch":
                wrong.append(f"{m} imports the package's public face")
            elif (m, d) in ALLOWED_UP or room(d) == room(m):
                continue
            elif floor(d) >= floor(m) and d != "git_scratch.constants":
                wrong.append(f"{m} (floor {floor(m)}) imports {d} (floor {floor(d)})")
    assert sorted(wrong) == []


def test_the_model_files_import_only_each_other():
    model = {m for m in MODULES if room(m) == "" and m != "git_scratch"}
    assert {m: sorted(d - model) for m, d in GRAPH.items() if m in model and d - model - {"git_scratch"}} == {
        "git_scratch.model": ["git_scratch.generation.generate",  # GIT.generate, when called
                              "git_scratch.preprocessing.processor"],  # its images, when given
        "git_scratch.load": ["git_scratch.sources"]}  # load(NAME) resolves the name, when called


def test_there_are_no_import_cycles():
    g = {m: {d for d in deps if not m.startswith(d + ".") and (m, d) not in ALLOWED_UP} for m, deps in GRAPH.items()}
    cycles, done = [], set()

    def visit(m, path):
        for d in sorted(g[m]):
            if d in path:
                cycles.append(path[path.index(d):] + [d])
            elif d not in done:
                visit(d, path + [d])
        done.add(m)

    for m in sorted(g):
        if m not in done:
            visit(m, [m])
    assert cycles == []


def test_every_room_is_a_floor_of_the_house():  # a new folder must be placed before its imports are judged
    assert {room(m) for m in MODULES} - {""} == set(FLOORS)


def test_the_graph_sees_imports():  # the tests above would pass on an empty graph
    assert {"git_scratch.constants", "git_scratch.cli.results"} <= GRAPH["git_scratch.cli.batch"]
    assert "git_scratch.convert.convert" in GRAPH["git_scratch.cli.convert"]  # in run, when the command runs
    assert {"git_scratch.config", "git_scratch.model"} <= GRAPH["git_scratch.convert.convert"]
    assert floor("git_scratch.cli.main") > floor("git_scratch.training.loop") > floor("git_scratch.data.batches")
    assert floor("git_scratch.data.batches") > floor("git_scratch.generation.cache") > floor("git_scratch.model")

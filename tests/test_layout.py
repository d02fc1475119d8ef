"""The package layout keeps its layers: imports go one way, no import cycles, small modules.

Layers, bottom to top: the inference library (``q8lib/*.py`` and ``q8lib/kernels/``), then
``q8lib.tiny`` (the trained toy default), then ``q8lib.app`` (generate/compare/memory and the CLI)
and ``q8lib.bench``, then ``q8lib.tutorial`` (notebook helpers). Read from the source with ``ast``,
so imports inside functions count too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "q8lib"

# Modules exempt from these rules: none since the kernel layer was split into one file per kernel (session 5).
KERNEL_LAYER: set = set()
MAX_LINES = 450
# Layer of each top-level package; everything else under q8lib/ is the library (layer 0).
LAYERS = {"q8lib.tiny": 1, "q8lib.app": 2, "q8lib.bench": 2, "q8lib.tutorial": 3, "q8lib.__main__": 4}
# Allowed exceptions to "only downward": the CLI's `q8lib bench` subcommand runs the benchmark.
ALLOWED = {("q8lib.app.cli", "q8lib.bench")}
# Module paths of earlier versions that only re-export from the new places: above every layer.
MOVED = {"q8lib.pipeline", "q8lib.ltx", "q8lib.cli", "q8lib.video", "q8lib.viz", "q8lib.patching", "q8lib.judge",
         "q8lib.shapes", "q8lib.train"}


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _owned_by_kernel_layer(mod: str) -> bool:
    return mod in KERNEL_LAYER


def _imports(mod: str, path: Path) -> list[tuple[str, bool]]:
    """``(imported q8lib module, inside a function)`` for every import of q8lib in ``path``."""
    tree = ast.parse(path.read_text())
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    modules = _modules()
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            local = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, local) for a in child.names if a.name.split(".")[0] == "q8lib")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    target = f"{base}.{child.module}" if child.module else base
                else:
                    target = child.module or ""
                if target.split(".")[0] == "q8lib":
                    for a in child.names:  # `from . import x` imports the submodule x when there is one
                        sub = f"{target}.{a.name}"
                        found.append((sub if sub in modules else target, local))
            visit(child, local)

    visit(tree, False)
    return found


def _layer(mod: str) -> int:
    if mod in MOVED:
        return 9
    return next((v for k, v in LAYERS.items() if mod == k or mod.startswith(k + ".")), 0)


def test_at_least_three_subpackages_along_the_layers():
    for pkg in ("q8lib.tiny", "q8lib.app", "q8lib.bench", "q8lib.tutorial"):
        assert (ROOT / pkg.split(".")[1] / "__init__.py").is_file(), pkg


def test_modules_are_small():
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES
            and not _owned_by_kernel_layer(m)}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
    assert len((ROOT / "app" / "cli.py").read_text().splitlines()) <= 300


def test_imports_go_one_way():
    wrong = []
    for mod, path in _modules().items():
        for target, _ in _imports(mod, path):
            if _layer(target) > _layer(mod) and (mod, target.rsplit(".", target.count(".") - 1)[0]) not in ALLOWED:
                wrong.append(f"{mod} -> {target}")
    assert not wrong, "imports from a higher layer: " + ", ".join(wrong)


def test_few_function_local_imports_of_q8lib():
    local = [f"{m} -> {t}" for m, p in _modules().items() if not _owned_by_kernel_layer(m)
             for t, inside in _imports(m, p) if inside]
    assert len(local) <= 5, local


def test_no_import_cycles():
    """Tarjan's strongly connected components over module -> module imports (function-local ones too)."""
    mods = _modules()
    graph = {m: {t for t, _ in _imports(m, p) if t in mods and t != m} for m, p in mods.items()}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 and not all(_owned_by_kernel_layer(c) for c in comp):
                cycles.append(sorted(comp))

    import sys
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in graph:
            if v not in index:
                strong(v)
    finally:
        sys.setrecursionlimit(limit)
    assert not cycles, cycles


@pytest.mark.parametrize("old, new, name", [
    ("q8lib.pipeline", "q8lib.app", "load_pipeline"), ("q8lib.ltx", "q8lib.convert", "quantize_"),
    ("q8lib.cli", "q8lib.app.cli", "main"), ("q8lib.video", "q8lib.app.video", "write_video"),
    ("q8lib.viz", "q8lib.tutorial.viz", "load_results"), ("q8lib.patching", "q8lib.tutorial.patching", "list_patches"),
    ("q8lib.judge", "q8lib.tiny.judge", "judge_video"), ("q8lib.shapes", "q8lib.tiny.shapes", "render"),
    ("q8lib.train", "q8lib.tiny.train", "TrainConfig")])
def test_moved_modules_still_import_and_name_the_new_place(old, new, name):
    import importlib
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(FutureWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert callable(getattr(module, name))


def test_sources_compile_without_syntax_warnings():
    """An invalid escape in a docstring (``\\s``) is a SyntaxWarning at import today and an error in a later Python;
    users saw it in every notebook output on the GPU."""
    import warnings

    sources = [*ROOT.rglob("*.py"), *ROOT.parent.joinpath("benchmarks").glob("*.py"),
               *ROOT.parent.joinpath("tests").glob("*.py")]
    for path in sources:
        with warnings.catch_warnings():
            warnings.simplefilter("error", SyntaxWarning)
            compile(path.read_text(), str(path), "exec")

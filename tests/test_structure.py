"""The shape of the house (STYLE.md, issue 28), read from the source: every import of every module of
gtasr_deploy/, function-local ones included and relative ones resolved. No import cycles; arrows
that point one way (lower layers never import higher ones); imports at the top of the file; few
modules at the package root; no module too long to read; click only in cli/."""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "gtasr_deploy"
NAME = PACKAGE.name

MAX_FUNCTION_LOCAL = 15  # package-internal imports inside functions (lazy: only optional third-party ones)
MAX_ROOT_MODULES = 10  # gtasr_deploy/*.py, __init__.py aside
MAX_LINES = 700


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # the imported module (dotted), resolved to a module of the package where one is named
    line: int
    in_function: bool


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative levels resolved against ``importer``)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports_of(module: str, source: str, *, is_package: bool) -> list[Import]:
    """Every import in ``source`` (third-party ones too), with whether it sits inside a function."""
    tree = ast.parse(source)
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(module, alias.name, node.lineno, in_function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node)
            for alias in node.names:  # `from pkg import sub` imports the module pkg.sub
                candidate = f"{base}.{alias.name}"
                found.append(Import(module, candidate if candidate in MODULES else base, node.lineno, in_function))
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return found


ALL_IMPORTS: list[Import] = [
    imp for module, path in MODULES.items()
    for imp in _imports_of(module, path.read_text(encoding="utf-8"), is_package=path.name == "__init__.py")]
INTERNAL: list[Import] = [imp for imp in ALL_IMPORTS if imp.target == NAME or imp.target.startswith(NAME + ".")]


def _owner(target: str) -> str:
    """The package module that holds ``target`` (a module, or a name inside one)."""
    while target not in MODULES and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {module: set() for module in MODULES}
    for imp in INTERNAL:
        target = _owner(imp.target)
        if target != imp.importer:
            edges[imp.importer].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a → ... → a) per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return [_a_cycle_in(set(c), edges) for c in components]


def _a_cycle_in(component: set[str], edges: dict[str, set[str]]) -> list[str]:
    """The shortest path back to the component's first module (breadth first), as a → b → ... → a."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(edges[v] & component):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    following.append(w)
        frontier = following
    return sorted(component)


def _area(module: str) -> str:
    """The first name under the package: a subpackage (engines, cli, ...) or a root module (tiling, ...)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _where(imp: Import) -> str:
    return f"{MODULES[imp.importer].relative_to(PACKAGE.parent)}:{imp.line} imports {imp.target}"


# --------------------------------------------------------------------------- the reader itself

def test_the_reader_sees_function_local_and_relative_imports():
    """The reader resolves relative imports and sees imports inside functions (the arrows rely on it)."""
    source = ("from . import memory, nothing\nfrom ..errors import ConfigError\n\n"
              "def f():\n    from .pipeline import Pipeline\n    import click\n")
    found = _imports_of("gtasr_deploy.inference.example", source, is_package=False)
    assert [(i.target, i.in_function) for i in found] == [
        ("gtasr_deploy.inference.memory", False), ("gtasr_deploy.inference", False), ("gtasr_deploy.errors", False),
        ("gtasr_deploy.inference.pipeline", True), ("click", True)]
    assert _imports_of("gtasr_deploy.inference", "from .memory import x", is_package=True)[0].target == \
        "gtasr_deploy.inference.memory"
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert len(INTERNAL) > 100 and any(imp.in_function for imp in INTERNAL)


# --------------------------------------------------------------------------- the rules

def test_no_import_cycles():
    cycles = _cycles(_edges())
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles)


ARROWS = {  # area → areas it never imports (lower layers never import higher ones)
    "training": ("inference", "cli", "batch", "serve", "bench", "upscaler"),
    "model": ("engines", "inference", "export", "cli", "upscaler"),
    "contract": ("engines", "inference", "export", "cli", "model", "upscaler"),
    "tiling": ("engines", "inference", "export", "cli", "model", "upscaler"),
    "engines": ("export", "inference", "cli", "bench", "batch", "upscaler"),
    "media": ("batch", "inference", "cli", "upscaler"),
    "batch": ("cli", "serve", "bench"),
    "inference": ("export", "cli", "bench", "batch", "serve", "upscaler"),
}


@pytest.mark.parametrize("area", sorted(ARROWS))
def test_import_arrows_point_one_way(area):
    forbidden = ARROWS[area]
    bad = [_where(imp) for imp in INTERNAL
           if _area(imp.importer) == area and _area(_owner(imp.target)) in forbidden]
    assert not bad, f"{area} never imports {', '.join(forbidden)}: " + "; ".join(bad)


def test_export_imports_engines_only_for_verification():
    bad = [_where(imp) for imp in INTERNAL if _area(imp.importer) == "export" and _area(_owner(imp.target)) ==
           "engines" and imp.importer != f"{NAME}.export.verify"]
    assert not bad, "export imports engines only in export/verify.py: " + "; ".join(bad)


def test_nothing_but_the_cli_imports_the_cli():
    """The commands are the top of the house: serve, bench, eval and the API take UpscaleOptions."""
    bad = [_where(imp) for imp in INTERNAL if _area(_owner(imp.target)) == "cli" and _area(imp.importer) != "cli"]
    assert not bad, "only gtasr_deploy/cli/ imports gtasr_deploy.cli: " + "; ".join(bad)


def test_only_the_cli_imports_click():
    bad = [_where(imp) for imp in ALL_IMPORTS
           if imp.target.split(".")[0] == "click" and _area(imp.importer) != "cli"]
    assert not bad, "only gtasr_deploy/cli/ imports click (the others take UpscaleOptions): " + "; ".join(bad)


def test_package_imports_sit_at_the_top_of_the_file():
    statements = {(imp.importer, imp.line): imp for imp in INTERNAL if imp.in_function}  # one per statement
    local = [_where(imp) for imp in statements.values()]
    assert len(local) <= MAX_FUNCTION_LOCAL, (f"{len(local)} package-internal imports inside functions "
                                              f"(at most {MAX_FUNCTION_LOCAL}): " + "; ".join(local))


def test_few_modules_at_the_package_root():
    root = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(root) <= MAX_ROOT_MODULES, f"{len(root)} modules at the package root (at most {MAX_ROOT_MODULES}): " \
                                          f"{root}"


def test_no_module_too_long_to_read():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in MODULES.values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


# --------------------------------------------------------------------------- the fast tier

@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    """Each module imports on the test install; with the behaviour tests, the fast tier touches every
    module (tests/test_missing_extras.py checks the imports without the optional packages)."""
    if module == f"{NAME}.integrations.spandrel_arch":
        from spandrel_shim import import_spandrel

        import_spandrel()  # spandrel next to the CPU torch (see the shim); skips without spandrel
    importlib.import_module(module)

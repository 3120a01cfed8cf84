"""Packages import in one direction only (docs/architecture.md, "Layers").

Every module of `metacl` is parsed with `ast`; every import counts, wherever it is: module level,
inside functions, under `if TYPE_CHECKING`, inside `try/except ImportError`, relative
(`from . import x`, `from ..core import batching`) or `importlib.import_module("metacl....")`
with a literal name. An import may go to its own package or to a package of a *lower* layer;
two packages of the same layer (the two meta-learners) may not import each other. On top of
that no cycle of modules may exist (a package's own `__init__` re-exporting its modules is
not a cycle: importing `metacl.strategies` from inside it is how registration works).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "metacl"

# (layer name, units). A unit is a subpackage `metacl.X` or a top-level module `metacl.X`.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"metacl", "metacl.errors", "metacl.utils", "metacl.checkpoint", "metacl.rng",
                    "metacl.distributed", "metacl.precision", "metacl.metalearner"}),
    ("core", {"metacl.core"}),
    ("engine", {"metacl.engine"}),
    ("data", {"metacl.data"}),
    ("models", {"metacl.models"}),
    ("meta-learners", {"metacl.meta", "metacl.optim"}),
    ("strategies", {"metacl.strategies"}),
    ("runner", {"metacl.ckl"}),
    ("benchmarks", {"metacl.benchmarks"}),
    ("cli", {"metacl.cli"}),
    ("entry", {"metacl.__main__"}),
]
LAYER_OF = {u: i for i, (_, units) in enumerate(LAYERS) for u in units}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def unit_of(mod: str) -> str:
    parts = mod.split(".")
    if len(parts) == 1:
        return "metacl"
    return ".".join(parts[:2])


def imports_of(mod: str, source: str, is_package: bool, known: set[str]) -> set[str]:
    """Every metacl module `mod` imports (resolved to a module when the name is one)."""
    tree = ast.parse(source)
    pkg = mod if is_package else mod.rpartition(".")[0]
    out: set[str] = set()

    def add(name: str, names: list[str] | None = None) -> None:
        if not (name == "metacl" or name.startswith("metacl.")):
            return
        if names:
            for n in names:
                out.add(f"{name}.{n}" if f"{name}.{n}" in known else name)
        else:
            out.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                name = ".".join(base) + (f".{node.module}" if node.module else "")
            else:
                name = node.module or ""
            add(name, [a.name for a in node.names])
        elif isinstance(node, ast.Call):
            f = node.func
            called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if called == "import_module" and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                add(node.args[0].value)
    return out


def violations(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """`sources`: module -> (source text, is_package). Returns one line per broken rule."""
    known = set(sources)
    graph = {m: imports_of(m, src, pkg, known) for m, (src, pkg) in sources.items()}
    bad: list[str] = []
    for m, targets in sorted(graph.items()):
        um = unit_of(m)
        if um not in LAYER_OF:
            bad.append(f"{m}: package {um} is in no layer; add it to LAYERS and docs/architecture.md")
            continue
        for t in sorted(targets):
            ut = unit_of(t)
            if ut == um:
                continue
            if ut not in LAYER_OF:
                bad.append(f"{m} imports {t}: package {ut} is in no layer")
            elif LAYER_OF[ut] > LAYER_OF[um]:
                bad.append(f"{m} imports {t}: up from layer {LAYERS[LAYER_OF[um]][0]} to {LAYERS[LAYER_OF[ut]][0]}")
            elif LAYER_OF[ut] == LAYER_OF[um] and LAYERS[LAYER_OF[um]][0] != "foundation":
                bad.append(f"{m} imports {t}: across layer {LAYERS[LAYER_OF[um]][0]} ({um} and {ut} are peers)")
    # cycles of modules (edges into a package's own __init__ from inside it are registration, not cycles)
    edges = {m: {t for t in ts if t in known and t != m and not (sources[t][1] and m.startswith(t + "."))}
             for m, ts in graph.items()}
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def strong(v: str) -> None:  # Tarjan
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    bad += [f"import cycle: {' <-> '.join(c)}" for c in sccs]
    return bad


def metacl_sources() -> dict[str, tuple[str, bool]]:
    return {module_name(p, ROOT): (p.read_text(), p.name == "__init__.py") for p in sorted(ROOT.rglob("*.py"))}


def test_every_import_goes_down_a_layer_and_no_module_cycle_exists():
    bad = violations(metacl_sources())
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_the_checker_sees_upward_guarded_relative_and_cyclic_imports():
    """The check above can fail: fake modules with each kind of forbidden import are caught."""
    base = {"metacl": ("", True), "metacl.errors": ("", False), "metacl.core": ("", True),
            "metacl.core.batching": ("", False), "metacl.ckl": ("", True), "metacl.ckl.train": ("", False),
            "metacl.meta": ("", True), "metacl.optim": ("", True), "metacl.optim.learned": ("", False),
            "metacl.meta.token_weighting": ("", False)}
    assert violations(base) == []
    cases = {
        "function-level upward": ("metacl.core.batching", "def f():\n    from metacl.ckl.train import x\n"),
        "guarded upward": ("metacl.core.batching", "try:\n    import metacl.ckl.train\nexcept ImportError:\n    pass\n"),
        "relative upward": ("metacl.core.batching", "from ..ckl import train\n"),
        "importlib upward": ("metacl.core.batching", "import importlib\nimportlib.import_module('metacl.ckl.train')\n"),
        "peer meta-learners": ("metacl.meta.token_weighting", "from metacl.optim.learned import X\n"),
        "unknown package": ("metacl.core.batching", "from metacl.nowhere import y\n"),
    }
    for what, (mod, src) in cases.items():
        fake = dict(base)
        fake[mod] = (src, False)
        if what == "unknown package":
            fake["metacl.nowhere"] = ("", True)
        assert violations(fake), f"{what} import not caught"
    cyc = dict(base)
    cyc["metacl.ckl.train"] = ("from metacl.ckl import report\n", False)
    cyc["metacl.ckl.report"] = ("import metacl.ckl.train\n", False)
    assert any("cycle" in v for v in violations(cyc))


@pytest.mark.parametrize("doc", ["docs/architecture.md"])
def test_the_layer_list_in_the_docs_names_every_layer(doc):
    text = (ROOT.parent / doc).read_text()
    for name, units in LAYERS:
        assert name in text, f"{doc} does not list layer {name}"
        for u in units:
            if u == "metacl":
                continue
            path = u.replace(".", "/")
            named = f"`{path}/`" in text if (ROOT.parent / path).is_dir() else path.rsplit("/", 1)[1] + ".py" in text
            assert named, f"{doc} does not name {u} in the layer list"

"""The architecture, checked: no import circles, and no module imports a layer above its own (docs/design.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import bbh

SRC = Path(bbh.__file__).resolve().parent

LAYERS: list[tuple[str, ...]] = [
    ("bbh.core",),                          # plain tensor code: options, io, threads, priors, elbo, functional,
                                            # likelihoods, metrics, the posterior predictive
    ("bbh.backends",),                      # the optional native kernels behind one seam
    ("bbh.kl",),
    ("bbh.models", "bbh.data"),
    ("bbh.posteriors",),
    ("bbh.training", "bbh.reference"),
    ("bbh.evaluation",),
    ("bbh.reports",),
    ("bbh.experiments",),
    ("bbh.cli", "bbh"),                     # the command line and the package's public face
]
"""Lowest first. Every layer is a folder (a package): no module is ranked apart from its folder."""


def test_layers_are_folders():
    """The layers name packages, never single modules inside a package (bar the top: the CLI and ``bbh``)."""
    for prefixes in LAYERS[:-1]:
        for prefix in prefixes:
            folder = SRC.parent.joinpath(*prefix.split("."))
            assert (folder / "__init__.py").is_file(), f"{prefix} is not a folder"
    top_level_files = {p.stem for p in SRC.glob("*.py")} - {"__init__"}
    assert top_level_files == {"cli"}, f"modules outside every layer folder: {sorted(top_level_files - {'cli'})}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, f"{name} is in no layer: add it to LAYERS (and docs/design.md)"
    return rank


def imports(path: Path) -> set[str]:
    """bbh modules imported anywhere in the file (also inside functions)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    modules = {module_name(p) for p in SRC.rglob("*.py")}
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("bbh"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("bbh")}
    return out - {me}


GRAPH = {module_name(p): imports(p) for p in SRC.rglob("*.py")}


def test_no_module_imports_a_higher_layer():
    bad = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
           for m, targets in GRAPH.items() for t in targets if layer(t) > layer(m)]
    assert not bad, "\n".join(bad)


def test_no_import_circles():
    # package __init__ files re-export their members; an import of the package itself is not an edge back
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_run_directory_file_names_have_one_home():
    """Only bbh.training.run_files spells the names of a run directory's files (as string constants)."""
    from bbh.training import run_files

    names = {getattr(run_files, n) for n in run_files.__all__} - {run_files.EVAL}  # "eval" is also a config table
    spelled = [f"{p.relative_to(SRC)}: {node.value!r}" for p in SRC.rglob("*.py") if p.name != "run_files.py"
               for node in ast.walk(ast.parse(p.read_text()))
               if isinstance(node, ast.Constant) and isinstance(node.value, str)
               and any(node.value == n or node.value.endswith("/" + n) for n in names)]
    assert not spelled, "\n".join(spelled)


def test_the_core_modules_keep_their_public_names():
    """bbh.core's modules are importable under the names users know (bbh.likelihoods, bbh.evaluation.metrics ...)."""
    import importlib

    for name in ("options", "io", "threads", "priors", "elbo", "functional", "likelihoods"):
        assert importlib.import_module(f"bbh.{name}") is importlib.import_module(f"bbh.core.{name}")
    for name in ("metrics", "predictive"):
        assert importlib.import_module(f"bbh.evaluation.{name}") is importlib.import_module(f"bbh.core.{name}")
    assert bbh.likelihoods.LearnedGaussian is importlib.import_module("bbh.core.likelihoods").LearnedGaussian

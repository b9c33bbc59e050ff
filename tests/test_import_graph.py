"""The package's architecture, checked: imports go downhill only, no circles, no private names
across modules, a pure vocabulary, nothing but the CLI reaching into the CLI or the launchers,
and no long module without a reason (CONTRIBUTING.md, docs/layout.md).

The checker is a small ast pass over the sources (no import is executed), so lazy imports inside
functions count as much as module-level ones, and so do imports under ``if TYPE_CHECKING:`` (a
type-only import is still a dependency of the design: it closes a circle as much as any other).
"""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "featcache"

# Layers from the bottom up: a module may import its own layer and the layers below it.
LAYERS = [
    ("errors", "version"),
    ("device", "progress"),
    ("spec",),
    ("data",),
    ("video",),
    ("cache",),
    ("extract",),
    ("heads",),
    ("train",),
    ("sweep",),
    ("launch",),
    ("cli",),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
HEAVY = {"torch", "numpy", "zarr", "av", "decord", "timm", "h5py", "torchvision", "torchcodec", "sklearn"}
MAX_LINES = 300
REASON = "Long module:"  # the docstring phrase that explains why a module is longer than MAX_LINES


def modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, type-only ones included."""
    yield from (node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)))


def graph(root: pathlib.Path):
    """(edges: module -> {(imported module, line)}, external: module -> {top-level packages},
    private: [(module, line, 'imported._name')])"""
    mods = modules(root)
    top = root.name
    edges, external, private = {}, {}, []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges[name], external[name] = set(), set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == top:
                        edges[name].add((_known(alias.name, mods), node.lineno))
                    else:
                        external[name].add(alias.name.split(".")[0])
                continue
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.split(".")[0] != top:
                external[name].add(base.split(".")[0])
                continue
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in mods:
                    edges[name].add((target, node.lineno))
                else:
                    edges[name].add((_known(base, mods), node.lineno))
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append((name, node.lineno, f"{base}.{alias.name}"))
    return edges, external, private


def _known(name: str, mods: dict) -> str:
    while name not in mods and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def cycles(edges: dict) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w, _ in edges.get(v, ()):
            if w == v or w not in edges:
                continue
            if w not in index:
                visit(w)
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
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the package root (the public API)


def violations(root: pathlib.Path) -> list[str]:
    """Every breach of the rules, one line each (empty when the package is clean)."""
    edges, external, private = graph(root)
    top = root.name
    problems = [f"import circle: {' <-> '.join(c)}" for c in cycles(edges)]
    for name, targets in sorted(edges.items()):
        src = layer(name)
        for target, line in sorted(targets):
            dst = layer(target)
            where = f"{name} (line {line}) imports {target}"
            if target == name:
                continue
            if dst is None:
                problems.append(f"{where}: only users import the package root; import the module that defines the name")
            elif src is None:
                continue  # the root re-exports the public API
            elif src not in RANK or dst not in RANK:
                problems.append(f"{where}: {src if src not in RANK else dst} is in no layer (tests/test_import_graph.py LAYERS)")
            elif RANK[dst] > RANK[src]:  # so only the CLI reaches the launchers, and nothing the CLI
                problems.append(f"{where}: upward import ({src} is below {dst})")
    problems += [f"{name} (line {line}) imports the private name {target}" for name, line, target in private]
    for name, packages in sorted(external.items()):
        if layer(name) == "spec" and packages & HEAVY:
            problems.append(f"{name} imports {', '.join(sorted(packages & HEAVY))}: {top}.spec must stay pure")
    for name, path in sorted(modules(root).items()):
        text = path.read_text()
        lines = text.count("\n")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if lines > MAX_LINES and REASON not in doc:
            problems.append(f"{name}: {lines} lines with no '{REASON}' reason in its docstring")
    return problems


def test_featcache_imports_downhill_without_circles():
    problems = violations(PACKAGE)
    assert not problems, "\n".join(problems)


def test_every_package_is_in_a_layer():
    packages = {layer(name) for name in modules(PACKAGE)} - {None}
    assert packages <= set(RANK), sorted(packages - set(RANK))


def _write(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for rel, text in files.items():
        path = root / "featcache" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "featcache"


def test_checker_catches_circles_upward_imports_and_private_names(tmp_path):
    root = _write(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "spec/__init__.py": "",
        "spec/view.py": "import torch\nfrom featcache.cache.store import open_cache\n",
        "cache/__init__.py": "",
        "cache/store.py": "def f():\n    from featcache.cache.dataset import g\n",
        "cache/dataset.py": "from featcache.cache.store import _helper\nfrom featcache import version\n",
        "train/__init__.py": "",
        "train/fit.py": "from featcache.launch import x\n",
        "launch/__init__.py": "",
    })
    problems = "\n".join(violations(root))
    assert "import circle: featcache.cache.dataset <-> featcache.cache.store" in problems
    assert "featcache.spec.view (line 2) imports featcache.cache.store: upward import (spec is below cache)" in problems
    assert "featcache.spec.view imports torch: featcache.spec must stay pure" in problems
    assert "imports the private name featcache.cache.store._helper" in problems
    assert "featcache.cache.dataset (line 2) imports featcache: only users import the package root" in problems
    assert "featcache.train.fit (line 1) imports featcache.launch: upward import" in problems


def test_checker_counts_type_checking_and_lazy_imports(tmp_path):
    root = _write(tmp_path, {
        "__init__.py": "",
        "cache/__init__.py": "",
        "cache/store.py": "def f():\n    from featcache.cache.dataset import g\n",
        "cache/dataset.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from featcache.cache.store import Cache\n",
        "video/__init__.py": "",
        "video/select.py": "def f():\n    import featcache.train.fit\n",
        "train/__init__.py": "",
        "train/fit.py": "",
    })
    problems = violations(root)
    assert "import circle: featcache.cache.dataset <-> featcache.cache.store" in problems, problems
    assert any("featcache.video.select (line 2) imports featcache.train.fit: upward import" in p for p in problems)


def test_long_module_needs_a_reason(tmp_path):
    body = "x = 1\n" * (MAX_LINES + 1)
    root = _write(tmp_path, {"__init__.py": "", "data/__init__.py": "", "data/big.py": body,
                             "data/fine.py": f'"""Big.\n\n{REASON} one format, read and written together."""\n' + body})
    assert [p for p in violations(root)] == [f"featcache.data.big: {MAX_LINES + 1} lines with no '{REASON}' reason in its docstring"]


@pytest.mark.parametrize("name", ["featcache.spec.view", "featcache.spec.config", "featcache.spec.sweep"])
def test_spec_imports_without_torch(name):
    """The vocabulary loads without the heavy stack (run in a fresh interpreter)."""
    import subprocess
    import sys

    code = (f"import sys, importlib; importlib.import_module({name!r}); "
            "heavy = sorted(m for m in ('torch', 'zarr', 'numpy', 'av', 'decord', 'timm') if m in sys.modules); "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert out.stdout.strip() == "", f"{name} pulled in {out.stdout.strip()}"

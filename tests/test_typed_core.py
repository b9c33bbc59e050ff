"""Issue 30's measure of the typed core: how often the package reads a value by a string literal
(``x["key"]``), an ast count over featcache/. Stored facts, run metadata, manifest rows, index
entries and table columns are types (cache/facts.py, train/meta.py, data/manifest.py, cache/index.py);
what is left is in-memory maps (config keys, split-keyed dicts, h5py/zarr/timm APIs). 887 at the start
of the round that typed them, 157 after; the bound keeps new code on the types.
"""
from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "featcache"
BOUND = 200


def count(tree: ast.AST) -> int:
    """Subscripts whose index is a string literal."""
    return sum(isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
               and isinstance(node.slice.value, str) for node in ast.walk(tree))


def literal_subscripts(root: pathlib.Path) -> dict[str, int]:
    counts = {str(p.relative_to(root.parent)): count(ast.parse(p.read_text(), str(p))) for p in sorted(root.rglob("*.py"))}
    return {k: v for k, v in counts.items() if v}


def test_the_counter_counts_what_it_says():
    assert count(ast.parse('a["x"]; a[0]; a[k]; a["y"]["z"]; a.get("w"); f"{a[\'v\']}"')) == 4


def test_string_key_reads_stay_within_the_bound():
    counts = literal_subscripts(PACKAGE)
    assert "featcache/cache/export.py" in counts  # the walk found the package (h5py attributes read there)
    worst = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:5])
    assert sum(counts.values()) <= BOUND, (f"{sum(counts.values())} x[\"literal\"] reads in featcache/ (bound {BOUND}); "
                                           f"most in {worst}: read the typed facts instead")

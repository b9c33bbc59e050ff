"""The benchmark scripts stay importable as the package changes (they run only as __main__)."""
import glob
import importlib.util
import os

import pytest

SCRIPTS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "benchmarks", "*.py")))


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_benchmark_imports(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.__doc__ and ".venv/bin/python benchmarks/" in module.__doc__  # says how to run it

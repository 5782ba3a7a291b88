"""Every docstring example in hepstream runs, one test per module, so a failing example names its module.

The modules are found from pyproject.toml's package list rather than by
walking ``hepstream.__path__``: ``hepstream.streaming``, ``.models`` and
``.serve`` live in top-level folders mapped by ``package-dir``, which an
editable install does not put under ``hepstream/``, and which
``pytest --doctest-modules`` would import under their folder names.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import io
import pkgutil
import tempfile
import tomllib
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _modules_with_examples() -> list[str]:
    """Modules of the installed packages whose source holds a ``>>>`` prompt; found without importing them."""
    packages = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["packages"]
    names = list(packages)
    for package in packages:
        spec = importlib.util.find_spec(package)
        names += [f"{package}.{module.name}" for module in pkgutil.iter_modules(spec.submodule_search_locations)
                  if not module.ispkg and module.name != "__main__"]
    return [name for name in names if ">>>" in Path(importlib.util.find_spec(name).origin).read_text()]


MODULES = _modules_with_examples()


def test_the_walk_finds_the_mapped_sub_packages():
    assert {"hepstream.wire", "hepstream.streaming.selection", "hepstream.models.features",
            "hepstream.serve.events"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, monkeypatch, tmp_path):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] == "hepstream":
            raise
        pytest.skip(f"{name} needs {error.name!r}, which is not installed")
    tests = [test for test in doctest.DocTestFinder().find(module) if test.examples]
    assert tests, f"{name} has '>>>' in its source but no docstring example doctest can find"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # examples' temporary files end with the test
    runner, report = doctest.DocTestRunner(), io.StringIO()
    for test in tests:
        runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()

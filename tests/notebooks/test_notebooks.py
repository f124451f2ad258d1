"""The committed notebooks: what tests/notebooks/make_notebooks.py writes, no outputs,
a `parameters` cell, the banner first, and only thin code cells."""
from __future__ import annotations

import nbformat
import pytest

from . import make_notebooks
from .nbrun import NOTEBOOK_DIR, NOTEBOOKS


def test_every_notebook_is_generated_and_clean():
    assert sorted(make_notebooks.NOTEBOOKS) == NOTEBOOKS
    assert make_notebooks.main(["--check"]) == 0, "run python -m tests.notebooks.make_notebooks"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_shape(name):
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert code[0].source.startswith('MODE = "auto"')
    assert "ui.banner(session)" in code[1].source and f'"{name}"' in code[1].source
    assert all(len(c.source.splitlines()) <= 3 for c in code), "notebook code stays thin"

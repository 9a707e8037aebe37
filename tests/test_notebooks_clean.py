"""Source notebooks are stripped, named NN_<stage>.ipynb, and ready for papermill."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from cdc.stages.params import read_yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
NAME = re.compile(r"^(?P<number>\d\d)_(?P<stage>[a-z][a-z0-9_]*)\.ipynb$")

each_notebook = pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in NOTEBOOKS])


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebooks"


@each_notebook
def test_name_and_stage(path):
    match = NAME.match(path.name)
    assert match, f"{path.name}: notebooks are named NN_<stage>.ipynb (lowercase stage)"
    stages = read_yaml(REPO / "dvc.yaml")["stages"]
    assert match["stage"] in stages, f"{path.name}: no stage '{match['stage']}' in dvc.yaml"
    sections = read_yaml(REPO / "params.yaml")
    assert match["stage"] in sections, f"{path.name}: no section '{match['stage']}' in params.yaml"
    title = nbformat.read(path, as_version=4).cells[0].source.splitlines()[0]
    assert title.startswith(f"# {path.name[:2]} · "), f"{path.name}: the title {title!r} carries another number"


def test_numbers_are_unique():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert len(numbers) == len(set(numbers)), f"duplicate notebook numbers: {numbers}"


@each_notebook
def test_stripped_with_python3_kernel(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name}: cell {i} has outputs (run nbstripout)"
            assert cell.execution_count is None, f"{path.name}: cell {i} has an execution count"


@each_notebook
def test_one_parameters_cell_of_literals(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged 'parameters', expected 1"
    # Plain literals only: papermill injects new values after this cell, so a derived value
    # here would silently keep its default (papermill's `twice = a * 2` caveat).
    for stmt in ast.parse(cells[0].source).body:
        assert isinstance(stmt, (ast.Assign, ast.AnnAssign)), f"{path.name}: not an assignment"
        ast.literal_eval(stmt.value)


@pytest.mark.slow
def test_nbstripout_verify_passes():
    cmd = [sys.executable, "-m", "nbstripout", "--verify", *map(str, NOTEBOOKS)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"run `nbstripout notebooks/*.ipynb`:\n{result.stdout}{result.stderr}"

"""Every notebook runs top to bottom through cdc.stages.notebook on the tiny configuration.

tests/smoke.yaml's `notebooks` maps a notebook stem to its papermill parameters, e.g.
    01_world: {params_path: "{params}", out_dir: "{tmp}/world"}
"{tmp}" becomes one folder shared by all notebooks of the run (so later notebooks can read what
earlier ones wrote), "{params}" the smoke params file and "{repo}" the repository root; notebooks run
in number order with the repository root as working directory, as under DVC.
"""

import sys
from pathlib import Path

import nbformat
import pytest

from cdc.errors import ParamsError
from cdc.stages.notebook import final_text, notebook_parameters, parse_value, run_notebook
from cdc.stages.params import read_yaml

pytestmark = pytest.mark.notebooks

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SMOKE = REPO / "tests" / "smoke.yaml"


def substitute(value, tmp: Path, params: Path):
    """Replace {tmp}, {params} and {repo} in strings, recursively."""
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp)).replace("{params}", str(params)).replace("{repo}", str(REPO))
    if isinstance(value, list):
        return [substitute(v, tmp, params) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, tmp, params) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smoke")


def test_every_notebook_has_a_smoke_entry():
    entries = read_yaml(SMOKE)["notebooks"]
    assert NOTEBOOKS, "no numbered notebooks found"
    assert sorted(entries) == [p.stem for p in NOTEBOOKS], "tests/smoke.yaml `notebooks` must list every notebook"


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in NOTEBOOKS])
def test_notebook_runs(path, smoke_dir, smoke_params_path):
    entries = read_yaml(SMOKE)["notebooks"]
    assert path.stem in entries, f"no entry for {path.stem} in tests/smoke.yaml `notebooks`"
    runs = entries[path.stem] if isinstance(entries[path.stem], list) else [entries[path.stem]]
    for i, entry in enumerate(runs):
        out = smoke_dir / "executed" / f"{path.stem}_{i}.ipynb"
        run_notebook(path, out, substitute(entry, smoke_dir, smoke_params_path), cwd=REPO)
        assert out.exists()


def tiny_notebook(folder: Path, body: str = "print(x * 2)") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("x: int = 1  # a number\ny, z = 'a', None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(body),
    ]
    path = folder / "00_tiny.ipynb"
    nbformat.write(nb, path)
    return path


def test_parameter_names_are_read_from_the_tagged_cell(tmp_path):
    assert notebook_parameters(tiny_notebook(tmp_path)) == ["x", "y", "z"]


def test_unknown_parameter_fails_before_executing(tmp_path, monkeypatch):
    import papermill

    def must_not_run(*args, **kwargs):
        raise AssertionError("papermill was called")

    monkeypatch.setattr(papermill, "execute_notebook", must_not_run)
    out = tmp_path / "executed" / "00_tiny.ipynb"
    with pytest.raises(ParamsError, match=r"unknown notebook parameter\(s\) 'xx'.*defines: x, y, z"):
        run_notebook(tiny_notebook(tmp_path), out, {"xx": 3})
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_run_creates_folder_and_injects(tmp_path):
    out = tmp_path / "executed" / "deeper" / "00_tiny.ipynb"
    run_notebook(tiny_notebook(tmp_path), out, {"x": 21})
    nb = nbformat.read(out, as_version=4)
    assert "injected-parameters" in nb.cells[1].metadata.tags
    assert nb.cells[2].outputs[0]["text"].strip() == "42"
    assert nb.metadata.papermill.output_path == str(out)


def test_progress_bars_are_stored_as_their_final_state(tmp_path):
    body = ("import sys, time\nfrom tqdm import tqdm\n"
            "for _ in tqdm(range(40), desc='work', mininterval=0, file=sys.stderr):\n    time.sleep(0.02)\n"
            "print('done')")
    out = tmp_path / "00_tiny.ipynb"
    run_notebook(tiny_notebook(tmp_path, body=body), out, {})
    outputs = nbformat.read(out, as_version=4).cells[-1].outputs
    streams = {name: "".join(o["text"] for o in outputs if o.get("name") == name) for name in ("stdout", "stderr")}
    assert len(outputs) <= 3  # a few merged outputs, not one per redraw (tqdm's closing newline may come last)
    assert "\r" not in streams["stderr"] and streams["stderr"].count("work:") == 1 and "40/40" in streams["stderr"]
    assert streams["stdout"] == "done\n"


@pytest.mark.parametrize(
    ("text", "shown"),
    [("\rbar 1\rbar 2\n", "bar 2\n"), ("a\r\nb", "a\nb"), ("\rx 1/2\rx 2/2\r", "x 2/2"), ("plain", "plain")],
)
def test_final_text_is_what_a_terminal_shows(text, shown):
    assert final_text(text) == shown


def test_failed_run_leaves_no_executed_copy(tmp_path):
    out = tmp_path / "executed" / "00_tiny.ipynb"
    with pytest.raises(Exception, match="ZeroDivisionError"):
        run_notebook(tiny_notebook(tmp_path, body="1 / 0"), out, {})
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e-5", 1e-5), ("3", 3), ("true", True), ("yes", "yes"), ("data/world", "data/world"),
     ("", ""), ("null", None), ("[1, 2]", [1, 2]), ("a: b", "a: b")],
)
def test_cli_values_are_yaml_1_2(text, value):
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_cli_rejects_unknown_parameter(tmp_path):
    import subprocess

    src = tiny_notebook(tmp_path)
    cmd = [sys.executable, "-m", "cdc.stages.notebook", str(src), str(tmp_path / "o.ipynb"), "-p", "q", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0 and "unknown notebook parameter(s) 'q'" in result.stderr
    assert not (tmp_path / "o.ipynb").exists()

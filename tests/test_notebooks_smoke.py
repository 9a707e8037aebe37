"""Every DVC stage runs its notebook top to bottom through cdc.stages.notebook, on the tiny configuration.

The runs are dvc.yaml's own: each stage's items expanded over the smoke params (params.yaml with tests/smoke.yaml's
overrides), each run's `-p` values over its notebook's parameters-cell defaults, and every path that points at a
stage's output redirected into one temporary folder shared by the whole run, so later stages read what earlier
ones wrote and nothing in the repository is touched. Stages run in dvc.yaml's order with the repository root as
working directory, as under DVC.
"""

import ast
import itertools
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

from cdc.errors import ParamsError
from cdc.stages.notebook import final_text, notebook_parameters, parse_value, run_notebook
from cdc.stages.params import read_yaml

pytestmark = pytest.mark.notebooks

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
STAGES = read_yaml(REPO / "dvc.yaml")["stages"]
TEMPLATE = re.compile(r"\$\{\s*([\w.-]+)\s*\}")


def lookup(dotted: str, variables: dict) -> Any:
    node: Any = variables
    for key in dotted.split("."):
        node = node[key]
    return node


def expand(text: str, variables: dict) -> str:
    """`text` with every ${a.b} replaced by its value."""
    return TEMPLATE.sub(lambda m: str(lookup(m.group(1), variables)), text)


def stage_items(stage: dict, params: dict) -> list[tuple[dict, dict]]:
    """(body, variables) per run of a stage: one for a plain stage, one per item of a foreach or matrix stage."""
    if "foreach" in stage:
        items = lookup(TEMPLATE.fullmatch(stage["foreach"]).group(1), params)
        return [(stage["do"], params | {"item": item}) for item in items]
    if "matrix" in stage:
        axes = {k: lookup(TEMPLATE.fullmatch(v).group(1), params) for k, v in stage["matrix"].items()}
        body = {k: v for k, v in stage.items() if k != "matrix"}
        return [(body, params | {"item": dict(zip(axes, combo))}) for combo in itertools.product(*axes.values())]
    return [(stage, params)]


def output_prefixes() -> list[str]:
    """Every stage output of dvc.yaml as a path prefix (a templated path up to its first ${)."""
    out = []
    for stage in STAGES.values():
        body = stage.get("do", stage)
        for key in ("outs", "metrics", "plots"):
            for entry in body.get(key, []) or []:
                out += [entry] if isinstance(entry, str) else list(entry)
    return [str(o).split("${")[0] for o in out]


def redirected(value: Any, tmp: Path, outputs: list[str]) -> Any:
    """A path parameter that names a stage output, lies under one or holds some, moved into `tmp`."""
    if not isinstance(value, str) or not value.startswith(("data/", "paper/")):
        return value
    if any(value.startswith(o) or o.startswith(value.rstrip("/") + "/") for o in outputs):
        return str(tmp / value)
    return value


def notebook_defaults(notebook: Path) -> dict[str, Any]:
    """The literal values the notebook's parameters cell assigns."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    out = {}
    for stmt in ast.parse("".join(cell["source"])).body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            out[stmt.targets[0].id] = ast.literal_eval(stmt.value)
    return out


def smoke_runs(stage: str, params: dict, params_path: Path, tmp: Path) -> list[tuple[Path, Path, dict]]:
    """(notebook, executed copy, papermill parameters) of each run of `stage` under the smoke params."""
    outputs, runs = output_prefixes(), []
    for body, variables in stage_items(STAGES[stage], params):
        cmd = shlex.split(expand(" ".join(body["cmd"]) if isinstance(body["cmd"], list) else body["cmd"],
                                 variables))
        assert cmd[:3] == ["python", "-m", "cdc.stages.notebook"], f"{stage}: cmd is not the notebook runner"
        notebook, executed, flags = REPO / cmd[3], cmd[4], cmd[5:]
        given = {flags[i + 1]: parse_value(flags[i + 2]) for i in range(0, len(flags), 3) if flags[i] == "-p"}
        values = notebook_defaults(notebook) | given | {"params_path": str(params_path)}
        runs.append((notebook, tmp / executed, {k: redirected(v, tmp, outputs) for k, v in values.items()}))
    return runs


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smoke")


def test_every_notebook_is_one_stage():
    used = [shlex.split(" ".join(s.get("do", s)["cmd"].split()))[3] for s in STAGES.values()]
    assert sorted(set(used)) == [f"notebooks/{p.name}" for p in NOTEBOOKS], "each numbered notebook must be a stage"


def test_smoke_runs_follow_dvc_yaml(tmp_path, smoke_params_path):
    """The derived runs: the stage's own -p values, outputs moved into the smoke folder, sources left alone."""
    params = read_yaml(smoke_params_path)
    (notebook, executed, values), *rest = smoke_runs("erase", params, smoke_params_path, tmp_path)
    assert notebook.name == "06_erase.ipynb" and len(rest) == len(params["erase"]["methods"]) - 1
    assert executed == tmp_path / "data/executed/06_erase_church_doco.ipynb"
    assert values["out_dir"] == str(tmp_path / "data/erase/church/doco")
    assert values["model_dir"] == str(tmp_path / "data/models/world") and values["method"] == "doco"
    (_, _, paper), = smoke_runs("paper", params, smoke_params_path, tmp_path)
    assert paper["source_path"] == "paper/main.typ" and paper["frozen_path"] == "data/frozen.yaml"
    assert paper["generated_dir"] == str(tmp_path / "paper/generated")


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_notebook_runs(stage, smoke_dir, smoke_params_path):
    for notebook, executed, values in smoke_runs(stage, read_yaml(smoke_params_path), smoke_params_path,
                                                 smoke_dir):
        run_notebook(notebook, executed, values, cwd=REPO)
        assert executed.exists()


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


@pytest.mark.slow
def test_cli_rejects_unknown_parameter(tmp_path):
    import subprocess

    src = tiny_notebook(tmp_path)
    cmd = [sys.executable, "-m", "cdc.stages.notebook", str(src), str(tmp_path / "o.ipynb"), "-p", "q", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0 and "unknown notebook parameter(s) 'q'" in result.stderr
    assert not (tmp_path / "o.ipynb").exists()

"""cdc.stages.notebook refuses a bad output path before running any cell, in one line and deleting nothing."""

import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from cdc.io import OutputKindError
from cdc.stages.notebook import run_notebook

REPO = Path(__file__).resolve().parents[1]


def write_notebook(folder: Path) -> Path:
    """A two-cell notebook with a tagged parameters cell (never executed by these tests)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("raise SystemExit('must not run')"),
    ]
    path = folder / "08_report.ipynb"
    nbformat.write(nb, path)
    return path


def executed_folder(tmp_path: Path) -> Path:
    """A tracked output folder with an executed notebook in it."""
    folder = tmp_path / "executed"
    folder.mkdir()
    (folder / "01_world.ipynb").write_text("{}")
    return folder


@pytest.fixture
def main(monkeypatch):
    """Run `python -m cdc.stages.notebook ARGS` in this process (no second interpreter); returns its exit code."""
    monkeypatch.setitem(sys.modules, "papermill", None)  # any import of papermill would fail

    def run(*args: str) -> object:
        monkeypatch.setattr(sys, "argv", ["cdc.stages.notebook", *args])
        with pytest.raises(SystemExit) as info:
            runpy.run_module("cdc.stages.notebook", run_name="__main__", alter_sys=False)
        return info.value.code

    return run


def test_folder_as_output_is_refused_before_running(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "papermill", None)  # any import of papermill would fail
    folder = executed_folder(tmp_path)
    with pytest.raises(OutputKindError, match=r"executed: it exists as a directory and the output is a file"):
        run_notebook(write_notebook(tmp_path), folder)
    assert sorted(p.name for p in folder.iterdir()) == ["01_world.ipynb"]


@pytest.mark.slow
def test_main_refuses_a_folder_in_one_line(tmp_path):
    folder = executed_folder(tmp_path)
    cmd = [sys.executable, "-m", "cdc.stages.notebook", str(write_notebook(tmp_path)), str(folder)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode != 0
    assert result.stderr.startswith(f"error: cannot write {folder}: it exists as a directory"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["01_world.ipynb"]


@pytest.mark.filterwarnings("ignore:'cdc.stages.notebook' found in sys.modules:RuntimeWarning")
def test_main_reports_a_file_in_the_way_of_the_folder(tmp_path, main):
    (tmp_path / "executed").write_text("not a folder")
    code = main(str(write_notebook(tmp_path)), str(tmp_path / "executed" / "08_report.ipynb"))
    assert code == f"error: cannot write {tmp_path}/executed/08_report.ipynb: {tmp_path}/executed is a file, " \
                   "not a directory"
    assert (tmp_path / "executed").read_text() == "not a folder"


@pytest.mark.filterwarnings("ignore:'cdc.stages.notebook' found in sys.modules:RuntimeWarning")
def test_main_reports_an_unreadable_notebook_in_one_line(tmp_path, main):
    src = tmp_path / "broken.ipynb"
    src.write_text("{not json")
    code = main(str(src), str(tmp_path / "out.ipynb"), "-p", "x", "1")
    assert isinstance(code, str) and code.startswith(f"error: {src}: not a readable notebook: "), code
    assert not (tmp_path / "out.ipynb").exists()


@pytest.mark.filterwarnings("ignore:'cdc.stages.notebook' found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize(("raised", "one_line"), [("KeyError(\"unknown concept family 'x'\")", True),
                                                  ("ZeroDivisionError('bug')", False)])
def test_main_reports_a_failing_cell(tmp_path, monkeypatch, raised, one_line):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(f"raise {raised}")]
    src, out = tmp_path / "05_anchors.ipynb", tmp_path / "executed" / "05_anchors.ipynb"
    nbformat.write(nb, src)
    monkeypatch.setattr(sys, "argv", ["cdc.stages.notebook", str(src), str(out)])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("cdc.stages.notebook", run_name="__main__", alter_sys=False)
    message = str(info.value.code)
    assert message.startswith(f"error: {src}, cell 2")
    assert (message.count("\n") == 0) == one_line, message
    assert not out.exists()


@pytest.mark.slow
def test_runner_and_params_import_no_torch():
    """Every DVC stage starts `python -m cdc.stages.notebook`: reading params.yaml must not load torch or diffusers
    (seconds per stage), which the notebook's own kernel loads anyway."""
    code = ("import sys, cdc.stages.notebook, cdc.stages.params; "
            "print(sorted({'torch', 'diffusers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


@pytest.mark.notebooks
def test_executed_copy_carries_no_virtualenv_path(tmp_path):
    """tqdm's missing-ipywidgets warning names the local site-packages path; the runner keeps it out."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("from tqdm.auto import tqdm\nfor _ in tqdm(range(3)):\n    pass")]
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    src = tmp_path / "nb.ipynb"
    nbformat.write(nb, src)
    out = run_notebook(src, tmp_path / "out.ipynb", {"x": 2})
    text = out.read_text()
    assert "site-packages" not in text and "IProgress" not in text and "3/3" in text


@pytest.mark.slow
@pytest.mark.notebooks
def test_runner_and_kernel_stop_when_their_parent_is_gone(tmp_path):
    """DVC exits on SIGTERM without stopping its stage: the runner notices, and neither it nor its kernel goes on
    (and no executed copy appears)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    pid_file = tmp_path / "kernel.pid"
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
                                          "time.sleep(60)")]
    src, out = tmp_path / "nb.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    parent = (f"import subprocess, sys, time\np = subprocess.Popen([sys.executable, '-m', 'cdc.stages.notebook', "
              f"{str(src)!r}, {str(out)!r}])\nprint(p.pid, flush=True)\n"
              f"while not __import__('os').path.exists({str(pid_file)!r}): time.sleep(0.2)\n")
    runner = int(subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True,
                                cwd=REPO, timeout=120).stdout)
    kernel = int(pid_file.read_text())

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]

    deadline = time.monotonic() + 30
    while (alive(runner) or alive(kernel)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive(runner) and not alive(kernel) and not out.exists()

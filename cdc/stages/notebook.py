"""Run a numbered notebook with papermill: parameter names checked, executed copy written atomically.

From DVC stages (papermill alone neither creates the output folder nor rejects misspelt `-p` names,
and leaves a half-executed copy behind on failure):

    python -m cdc.stages.notebook notebooks/01_world.ipynb data/executed/01_world.ipynb -p out_dir data/world
"""

from __future__ import annotations

import ast
import os
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nbformat

from cdc.errors import ParamsError
from cdc.io import atomic_path, check_output
from cdc.stages.params import parse_yaml

KERNEL = "python3"
# Warnings the kernel need not print into an executed copy: tqdm's note that ipywidgets is missing (the bars
# fall back to text) names the local virtualenv's path, which would then sit in every committed notebook.
KERNEL_WARNINGS = "ignore:IProgress not found"
# Exceptions raised inside a notebook that report bad input rather than a bug: shown as one line.
USER_ERRORS = frozenset({
    "CdcError", "ParamsError", "LoraError", "NaNLossError", "OutputKindError", "ValueError", "KeyError",
    "FileNotFoundError", "FileExistsError", "PermissionError", "IsADirectoryError", "NotADirectoryError", "OSError",
})


def _parameters_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    """Cells tagged `parameters` (papermill injects its values right after the first one)."""
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


def _read_notebook(src: Path) -> nbformat.NotebookNode:
    """Read a notebook; one that is not valid JSON raises ValueError naming it."""
    try:
        return nbformat.read(src, as_version=4)
    except ValueError as exc:  # nbformat's NotJSONError and UnicodeDecodeError
        raise ValueError(f"{src}: not a readable notebook: {exc}") from exc


def notebook_parameters(src: str | os.PathLike[str]) -> list[str]:
    """Names assigned at top level in the notebook's single `parameters`-tagged cell."""
    src = Path(src)
    cells = _parameters_cells(_read_notebook(src))
    if len(cells) != 1:
        raise ParamsError(f"{src}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError as exc:
        raise ParamsError(f"{src}: parameters cell is not valid Python: {exc}") from exc
    names: list[str] = []
    for stmt in tree.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
        for target in targets:
            elts = target.elts if isinstance(target, ast.Tuple) else [target]
            names += [e.id for e in elts if isinstance(e, ast.Name)]
    return names


def check_parameters(src: str | os.PathLike[str], parameters: Mapping[str, Any]) -> None:
    """Raise ParamsError if a parameter is not defined in the notebook's parameters cell."""
    if not parameters:
        return
    known = notebook_parameters(src)
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise ParamsError(
            f"{src}: unknown notebook parameter(s) {', '.join(map(repr, unknown))} "
            f"(parameters cell defines: {', '.join(known) or 'nothing'})"
        )


def final_text(text: str) -> str:
    """What a terminal shows for `text`: each line keeps only what was written after its last carriage return."""
    lines = text.replace("\r\n", "\n").split("\n")
    return "\n".join(([s for s in line.split("\r") if s] or [""])[-1] for line in lines)


def collapse_progress(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Merge each cell's consecutive stream outputs and keep the last state of redrawn lines (tqdm bars).

    A progress bar redraws its line with a carriage return; an executed notebook stores every redraw as
    its own output (thousands for a training loop), while a reader only wants the final bar.
    """
    for cell in nb.cells:
        merged: list[nbformat.NotebookNode] = []
        for out in cell.get("outputs", []):
            prev = merged[-1] if merged else None
            if (out.get("output_type") == "stream" and prev is not None
                    and prev.get("output_type") == "stream" and prev.get("name") == out.get("name")):
                prev["text"] += out["text"]
            else:
                merged.append(out)
        for out in merged:
            if out.get("output_type") == "stream":
                out["text"] = final_text(out["text"])
        if "outputs" in cell:
            cell["outputs"] = merged
    return nb


def run_notebook(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    parameters: Mapping[str, Any] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    log_output: bool = False,
) -> Path:
    """Execute `src` with `parameters` into `out` (created with its folder only if every cell ran)."""
    src, out, parameters = Path(src), Path(out), dict(parameters or {})
    if not src.is_file():
        raise FileNotFoundError(f"notebook not found: {src}")
    check_parameters(src, parameters)
    # Before running anything: an `out` that is a folder (e.g. data/executed) would only be refused
    # after every cell had run.
    check_output(out, "file")

    import papermill  # imported here: it is slow to import and only this function needs it

    # The kernel inherits this process's environment.
    filters = os.environ.get("PYTHONWARNINGS", "")
    if KERNEL_WARNINGS not in filters:
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [filters, KERNEL_WARNINGS]))

    with atomic_path(out) as tmp:
        papermill.execute_notebook(
            str(src),
            str(tmp),
            parameters=parameters,
            kernel_name=KERNEL,
            progress_bar=True,
            log_output=log_output,
            cwd=None if cwd is None else str(cwd),
        )
        # papermill records where it wrote; record the final name, not the temporary one.
        nb = collapse_progress(nbformat.read(tmp, as_version=4))
        nb.metadata.setdefault("papermill", {})["output_path"] = str(out)
        nbformat.write(nb, tmp)
    return out


def exit_with_parent(interval: float = 1.0) -> threading.Thread:
    """Send this process SIGTERM once its parent is gone (DVC exits on SIGTERM without stopping the stage it
    runs): the executed copy is then not written and papermill shuts the kernel down. Returns the watcher."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def parse_value(text: str) -> Any:
    """Read a command-line parameter value as a YAML 1.2 scalar or list (`1e-5` -> float)."""
    if text == "":
        return ""
    try:
        value = parse_yaml(text)
    except ParamsError:
        return text
    if isinstance(value, dict) or (value is None and text.strip() not in ("null", "~")):
        return text  # `a: b` or a bare comment is meant as a string, not a mapping or null
    return value


if __name__ == "__main__":
    import argparse
    import sys

    from cdc.errors import CdcError

    parser = argparse.ArgumentParser(
        prog="python -m cdc.stages.notebook",
        description="Execute a notebook with papermill; the output folder is created and the "
        "executed copy appears only if every cell ran.",
    )
    parser.add_argument("src", type=Path, help="source notebook (stripped, tagged parameters cell)")
    parser.add_argument("out", type=Path, help="executed copy to write")
    parser.add_argument(
        "-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
        help="notebook parameter; VALUE is read as YAML 1.2 (1e-5 is a float, 'true' a bool)",
    )
    parser.add_argument("--cwd", type=Path, default=None, help="kernel working directory")
    parser.add_argument("--log-output", action="store_true", help="echo cell output to stderr")
    args = parser.parse_args()
    names = [name for name, _ in args.parameter]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        parser.error(f"parameter given more than once: {', '.join(duplicates)}")
    exit_with_parent()
    try:
        run_notebook(
            args.src,
            args.out,
            {name: parse_value(value) for name, value in args.parameter},
            cwd=args.cwd,
            log_output=args.log_output,
        )
    except (CdcError, OSError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    except Exception as exc:
        from papermill.exceptions import PapermillExecutionError  # imported only when a cell failed

        if not isinstance(exc, PapermillExecutionError):
            raise
        # A problem the user can fix (bad input, a missing file) is one line; anything else is a bug,
        # whose traceback papermill has already formatted.
        where = f"{args.src}, cell {exc.exec_count}"
        if exc.ename in USER_ERRORS:
            sys.exit(f"error: {where}: {exc.ename}: {exc.evalue}")
        sys.exit(f"error: {where} failed:\n" + "\n".join(exc.traceback))

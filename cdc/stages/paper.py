"""Build the paper: check every generated file it reads, then compile paper/main.typ with Typst into a PDF."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from cdc.io import atomic_path


class Input(NamedTuple):
    """A file the paper reads and the command that writes it."""

    path: Path
    made_by: str


def paper_inputs(erase_csv: str | os.PathLike[str], world_json: str | os.PathLike[str],
                 generated_dir: str | os.PathLike[str], params_path: str | os.PathLike[str],
                 grids: Sequence[str], frozen_yaml: str | os.PathLike[str]) -> dict[str, Input]:
    """What main.typ reads, keyed by the path it reads it under (relative to main.typ), with its source file."""
    generated = Path(generated_dir)
    report = "dvc repro report"
    inputs = {
        "data/erase.csv": Input(Path(erase_csv), report),
        "data/world.json": Input(Path(world_json), "dvc repro base"),
        "data/ablate.csv": Input(generated / "ablate_table.csv", report),
        "data/transfer.csv": Input(generated / "transfer_table.csv", report),
        "data/matched.csv": Input(generated / "matched_table.csv", report),
        "data/matched_verdict.csv": Input(generated / "matched_verdict.csv", report),
        "data/relearn.csv": Input(generated / "relearn_table.csv", report),
        "data/multi.csv": Input(generated / "multi_curves.csv", report),
        "data/ours.csv": Input(generated / "ours_table.csv", report),
        "data/params.yaml": Input(Path(params_path), "nothing: it is the pipeline's configuration, restore it"),
        "data/frozen.yaml": Input(Path(frozen_yaml), "python -m cdc.stages.frozen"),
        "figures/asr_retention.png": Input(generated / "asr_retention.png", report),
        "figures/context_budget.png": Input(generated / "context_budget.png", report),
        "figures/ablate.png": Input(generated / "ablate.png", report),
        "figures/tradeoff.png": Input(generated / "tradeoff.png", report),
        "figures/relearn.png": Input(generated / "relearn.png", report),
        "figures/multi.png": Input(generated / "multi.png", report),
    }
    for family in grids:
        name = f"erase_grid_{family}.png"
        inputs[f"figures/{name}"] = Input(generated / name, report)
    return inputs


def check_inputs(inputs: Mapping[str, Input]) -> None:
    """Raise FileNotFoundError naming every missing input and the command that writes it: no table goes missing."""
    missing = [f"  {i.path}  (made by `{i.made_by}`)" for i in inputs.values() if not i.path.is_file()]
    if missing:
        raise FileNotFoundError(f"the paper reads {len(missing)} file(s) that do not exist:\n" + "\n".join(missing))


def compile_paper(source: str | os.PathLike[str], bibliography: str | os.PathLike[str],
                  inputs: Mapping[str, Input], grids: Sequence[str], pdf: str | os.PathLike[str]) -> Path:
    """Compile `source` (with `bibliography` and `inputs` beside it under their names) to `pdf`, atomically."""
    import typst  # imported here: only the paper stage needs the compiler

    source, bibliography = Path(source), Path(bibliography)
    for path in (source, bibliography):
        if not path.is_file():
            raise FileNotFoundError(f"paper source not found: {path}")
    check_inputs(inputs)
    with tempfile.TemporaryDirectory(prefix="cdc-paper-") as folder:
        # One folder holds the document and copies of its inputs: Typst reads only files under its root, and
        # the inputs live in several places (data/metrics, paper/generated, a smoke run's temporary folder).
        root = Path(folder)
        shutil.copyfile(source, root / "main.typ")
        shutil.copyfile(bibliography, root / bibliography.name)
        for name, item in inputs.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.path, root / name)
        with atomic_path(pdf, kind="file") as tmp:
            try:
                # No timestamp: the PDF carries no date, so the same inputs give the same bytes.
                typst.compile(str(root / "main.typ"), output=str(tmp), root=str(root),
                              sys_inputs={"grids": ",".join(grids)}, timestamp=None)
            except typst.TypstError as exc:
                detail = getattr(exc, "diagnostic", None) or str(exc)
                raise ValueError(f"{source}: Typst could not compile the paper:\n{detail}") from None
    return Path(pdf)


def build_paper(source: str | os.PathLike[str], bibliography: str | os.PathLike[str],
                erase_csv: str | os.PathLike[str], world_json: str | os.PathLike[str],
                generated_dir: str | os.PathLike[str], params_path: str | os.PathLike[str], grids: Sequence[str],
                pdf: str | os.PathLike[str], frozen_yaml: str | os.PathLike[str]) -> Path:
    """The paper stage: gather the generated files, refuse if any is missing, compile to `pdf`."""
    inputs = paper_inputs(erase_csv, world_json, generated_dir, params_path, grids, frozen_yaml)
    return compile_paper(source, bibliography, inputs, grids, pdf)

"""What each DVC stage costs outside its notebook's cells: the runner, the kernel, DVC's rewrite of dvc.lock.

    python benchmarks/stage_overhead.py [--repeats 3] [--lock dvc.lock] [--json out.json]

Every stage runs `python -m cdc.stages.notebook` (the runner: it reads the notebook and starts papermill), papermill
starts a kernel and runs the cells, and DVC then records the stage in dvc.lock by reading, changing and
rewriting the whole file. `stage_times.py` shows the sum of these as the gap between notebooks; this script
times each part on its own, median over `--repeats`:

- runner import: a fresh interpreter importing `cdc.stages.notebook` (it must not load torch);
- empty stage: `python -m cdc.stages.notebook` on a one-cell notebook, end to end (runner, kernel, atomic write);
- lock parse and lock rewrite: DVC's own YAML reader, and its read-modify-write, on a copy of `--lock`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
from dvc.utils.serialize import modify_yaml, parse_yaml

from cdc.io import save_json


def timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """Median, min and max wall seconds of `repeats` calls."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(seconds), 3), "min_s": round(min(seconds), 3),
            "max_s": round(max(seconds), 3)}


def run(*args: str) -> None:
    """Run a command, raising with its stderr if it fails."""
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr.strip()}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls of each part")
    ap.add_argument("--lock", type=Path, default=Path("dvc.lock"), help="the lock file DVC rewrites after each stage")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if not args.lock.is_file():
        ap.error(f"--lock {args.lock} is not a file (run it from the repository root)")
    text = args.lock.read_text(encoding="utf-8")
    stages = len((parse_yaml(text, str(args.lock)) or {}).get("stages", {}))

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        empty = folder / "00_empty.ipynb"
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]})]
        nbformat.write(nb, empty)
        copy = folder / "dvc.lock"
        shutil.copyfile(args.lock, copy)

        def rewrite() -> None:
            with modify_yaml(copy) as data:  # what DVC does to record one stage
                data["stages"] = dict(data.get("stages") or {})

        result = {
            "runner_import": timed(lambda: run(sys.executable, "-c", "import cdc.stages.notebook"), args.repeats),
            "empty_stage": timed(lambda: run(sys.executable, "-m", "cdc.stages.notebook", str(empty),
                                             str(folder / "out" / "00_empty.ipynb")), args.repeats),
            "lock_parse": timed(lambda: parse_yaml(text, str(args.lock)), args.repeats),
            "lock_rewrite": timed(rewrite, args.repeats),
            "lock": {"path": str(args.lock), "bytes": len(text.encode()), "lines": text.count("\n"), "stages": stages},
        }
    print(f"dvc.lock: {stages} stages, {result['lock']['lines']} lines, {result['lock']['bytes'] / 1e3:.0f} kB")
    print(f"{'part':<15}{'median s':>10}{'min':>8}{'max':>8}")
    for part in ("runner_import", "empty_stage", "lock_parse", "lock_rewrite"):
        r = result[part]
        print(f"{part:<15}{r['median_s']:>10.2f}{r['min_s']:>8.2f}{r['max_s']:>8.2f}")
    fixed = result["empty_stage"]["median_s"] + result["lock_rewrite"]["median_s"]
    print(f"per stage outside its cells: about {fixed:.1f} s (empty stage + lock rewrite), plus DVC's own checks")
    if args.json:
        save_json(result, args.json)
    return result


if __name__ == "__main__":
    main()

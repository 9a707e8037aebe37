"""The stages frozen in dvc.yaml (`frozen: true`: `dvc repro` skips them and their committed outputs stand) and
the commit that made each one's outputs, read from the history of dvc.lock into data/frozen.yaml.

Run `python -m cdc.stages.frozen` after re-running a frozen stage; the report and the paper name these commits.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from cdc.io import save_text
from cdc.stages.params import parse_yaml, read_yaml

OUT = Path("data/frozen.yaml")


def frozen_stages(dvc_yaml: dict[str, Any]) -> list[str]:
    """Names of the dvc.yaml stages marked frozen (in the stage, or in a foreach stage's `do` body)."""
    stages = dvc_yaml["stages"]
    return [name for name, st in stages.items() if (st.get("do", st) if "foreach" in st else st).get("frozen")]


def outputs(lock_stage: dict[str, Any]) -> tuple[tuple[str, str | None], ...]:
    """A dvc.lock stage's outputs as (path, md5) pairs: what its run made."""
    return tuple(sorted((o["path"], o.get("md5")) for o in lock_stage.get("outs", [])))


def sampler_steps(lock_stage: dict[str, Any]) -> int | None:
    """The DDIM steps a dvc.lock stage ran with (its params.yaml `sample` section), None if it reads no sampler."""
    return ((lock_stage.get("params") or {}).get("params.yaml") or {}).get("sample", {}).get("steps")


def made_by(history: list[tuple[str, str, dict[str, Any]]], stages: list[str]) -> dict[str, dict[str, Any]]:
    """Per frozen stage: the commits (newest first in `history`: (sha, date, dvc.lock stages)) whose dvc.lock
    first recorded each instance's current outputs, i.e. the oldest commit of the unbroken run of commits
    that carry them, and the sampler steps its instances ran with (`sample_steps`, empty if none samples)."""
    current = history[0][2]
    want = {n: outputs(s) for n, s in current.items() if n.split("@")[0] in stages}
    found: dict[str, tuple[str, str]] = {}
    alive = set(want)
    for sha, day, lock in history:
        for name in list(alive):
            if name in lock and outputs(lock[name]) == want[name]:
                found[name] = (sha, day)
            else:
                alive.discard(name)
        if not alive:
            break
    age = {sha: i for i, (sha, _, _) in enumerate(history)}  # 0 = newest
    out: dict[str, dict[str, Any]] = {}
    for stage in stages:
        made = sorted({found[n] for n in found if n.split("@")[0] == stage}, key=lambda c: -age[c[0]])
        steps = {sampler_steps(s) for n, s in current.items() if n.split("@")[0] == stage}
        out[stage] = {"commits": [sha for sha, _ in made], "dates": sorted({day for _, day in made}),
                      "sample_steps": sorted(x for x in steps if x is not None)}
    return out


def lock_history(repo: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(short sha, commit date, dvc.lock stages) for every commit that changed dvc.lock, newest first."""
    log = subprocess.run(["git", "log", "--format=%h %cs", "--", "dvc.lock"], cwd=repo, check=True,
                         capture_output=True, text=True).stdout.split()
    history = []
    for sha, day in zip(log[::2], log[1::2]):
        text = subprocess.run(["git", "show", f"{sha}:dvc.lock"], cwd=repo, check=True, capture_output=True,
                              text=True).stdout
        history.append((sha, day, (parse_yaml(text, f"{sha}:dvc.lock") or {}).get("stages", {})))
    return history


def main(repo: Path = Path(".")) -> None:
    """Write data/frozen.yaml for the committed dvc.yaml and dvc.lock history."""
    stages = frozen_stages(read_yaml(repo / "dvc.yaml"))
    records = made_by(lock_history(repo), stages)
    lines = ["# Stages frozen in dvc.yaml: `dvc repro` skips them; their outputs are the committed ones.",
             "# commits: where dvc.lock first recorded each instance's current outputs (python -m cdc.stages.frozen).",
             "# To re-run one: drop its `frozen: true` line in dvc.yaml, `dvc repro <stage>`, put the line back,",
             "# then re-run this module."]
    for stage, rec in records.items():
        commits = ", ".join(f'"{c}"' for c in rec["commits"])  # quoted: a sha such as 95e2250 reads as a number
        steps = ", ".join(str(x) for x in rec["sample_steps"])
        lines.append(f"{stage}: {{commits: [{commits}], dates: [{', '.join(rec['dates'])}], sample_steps: [{steps}]}}")
    save_text("\n".join(lines) + "\n", repo / OUT)


if __name__ == "__main__":
    main()

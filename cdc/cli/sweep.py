"""`cdc sweep`: the concept x method grid of a params file as queued DVC experiments, one per (concept, method).
Each experiment runs the pipeline up to `evaluate` and `attack`, with `erase.concepts` and `erase.methods` narrowed
to one pair (the ablate and transfer stages need other families), so `dvc queue start -j N` runs N of them side by
side, on one machine or, with one DVC worker per GPU, on several, and `dvc exp show` lists their metrics together.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

PIPELINE_PARAMS = "params.yaml"  # the one params file the DVC stages read


def queue_commands(concepts: list[str], methods: list[str]) -> list[list[str]]:
    """One `dvc exp run --queue` command per (concept, method), named `<concept>-<method>`, up to evaluate and
    attack."""
    return [["dvc", "exp", "run", "--queue", "-n", f"{c}-{m}".replace("_", "-"),
             "-S", f"erase.concepts=[{c}]", "-S", f"erase.methods=[{m}]",
             "-S", f"paper.grids=[{c}]", "evaluate", "attack"]  # the paper shows only erased families
            for c in concepts for m in methods]


def queue_start_command(jobs: int, cores: int) -> str:
    """How to run the queue N at a time without oversubscribing the cores: torch threads = cores // N each."""
    return f"OMP_NUM_THREADS={max(1, cores // jobs)} dvc queue start -j {jobs}"


def cmd_sweep(args: argparse.Namespace) -> int:
    """Queue the grid (or print it with --dry-run)."""
    from cdc.stages.schema import load_params

    if Path(args.params).resolve() != Path(PIPELINE_PARAMS).resolve():
        raise ValueError(f"the pipeline's stages read {PIPELINE_PARAMS} only, so experiments of {args.params} would "
                         f"change nothing (for Stable Diffusion, run `cdc erase --preset sd` per concept)")
    params = load_params(args.params)
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    concepts = args.concept or params.erase.concepts
    methods = args.method or params.erase.methods
    unknown = [c for c in concepts if c not in params.erase.concepts] + \
              [m for m in methods if m not in params.erase.methods]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not in {args.params}'s erase.concepts or erase.methods")
    commands = queue_commands(concepts, methods)
    if args.dry_run:
        print("\n".join(" ".join(c) for c in commands))
        return 0
    if shutil.which("dvc") is None:
        raise OSError("dvc is not on PATH (activate the environment that installed cdc)")
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise OSError(f"{' '.join(command)} failed: {(done.stderr or done.stdout).strip().splitlines()[-1]}")
    if not args.quiet:
        start = queue_start_command(args.jobs, len(os.sched_getaffinity(0)))
        print(f"queued {len(commands)} experiments; run them {args.jobs} at a time with `{start}`, "
              "follow with `dvc queue status`, compare with `dvc exp show`")
    return 0


def add_sweep_parser(sub: Any) -> None:
    """Add `cdc sweep` to the `cdc` subparsers."""
    s = sub.add_parser("sweep", help="queue the concept x method grid as DVC experiments (dvc queue start -j N)",
                       description="One queued DVC experiment per (concept, method) of the params file; each runs "
                                   "the pipeline for that pair. Run them with `dvc queue start -j N`.")
    s.add_argument("--params", default=PIPELINE_PARAMS, help="the pipeline's params file (erase gives the grid)")
    s.add_argument("--jobs", type=int, default=2, help="experiments the printed `dvc queue start` runs at a time")
    s.add_argument("--concept", action="append", default=None, help="only these concepts (repeatable)")
    s.add_argument("--method", action="append", default=None, help="only these methods (repeatable)")
    s.add_argument("--dry-run", action="store_true", help="print the dvc commands instead of running them")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_sweep)

"""What one evaluated row costs, and what a cheaper sampler would change in it.

    python benchmarks/evaluate_speed.py --concept church [--erased data/erase/church/doco] \
        --setting "" --setting "steps=10" [--repeats 2] [--threads 2] [--json out.json]

One row is what the `evaluate` stage computes per model (`cdc.evaluate.erasure_row`): the family's in-set and
out-of-set prompts, the neighbours, the retained concepts and world-FID, with the evaluate stage's prompts,
seeds and judge. Each `--setting` overrides params.yaml's `sample` section (`""` is params.yaml as it is, so it
reproduces the committed row of `data/eval/<concept>.json`); the settings are interleaved over `--repeats`
rounds (A B, then B A, ...) on the same model, so drift of the machine hits all alike. The table gives each
setting's median seconds per row, the images it sampled and UNet calls per image, and every rate beside the
first setting's, so a cheaper setting is judged on what it measures, not only on its speed.

`--erased` is an erase stage output (a LoRA or a text-encoder folder); without it the base model is timed
(a LoRA on the cross-attention K/V adds little to a row's cost).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from typing import Any

import torch

from cdc.erased import erased_model
from cdc.evaluate import erasure_row
from cdc.io import save_json
from cdc.stages.params import with_overrides
from cdc.stages.schema import load_params
from cdc.stages.workspace import family_inputs_or_exit
from cdc.system import hardware, resolve_precision
from cdc.world.data import other_concepts

RATES = ("in_set", "out_of_set", "retain_neighbors", "retain_all", "world_fid")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concept", default="church", help="a target family of the world (params.yaml targets)")
    p.add_argument("--erased", default=None, help="an erase stage output folder (default: the base model)")
    p.add_argument("--setting", action="append", default=None,
                   help='sample overrides, e.g. "steps=10" ("" = params.yaml); repeatable (default: "" and "steps=10")')
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data", default="data", help="the pipeline's data folder")
    p.add_argument("--json", default=None, help="write the measurements here")
    return p.parse_args(argv)


def unet_calls(steps: int, guidance: float) -> int:
    """UNet passes per image: one per step, two with classifier-free guidance."""
    return steps * (1 if guidance == 1 else 2)


def images(row: dict, fid_images: int | None, renders: int) -> int:
    """Images sampled for one row: every rate's judged images plus world-FID's."""
    counted = sum(row[f"{k}_n"] for k in ("in_set", "out_of_set", "retain_neighbors", "retain_all"))
    return counted + (renders if fid_images is None else min(fid_images, renders))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time one evaluated row per sampler setting; print the table and return the measurements."""
    args = parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = args.setting if args.setting is not None else ["", "steps=10"]
    params = load_params(args.params)
    samplers = [with_overrides(params.sample, s, "sample") for s in settings]  # checked before any work
    inputs = family_inputs_or_exit(args.data, args.concept, args.erased)
    cfg = params.evaluate
    world, judge, bundle = inputs.world, inputs.judge, inputs.bundle
    pairs, probe = inputs.pairs, inputs.probe
    retain = other_concepts(world, cfg.n_retain, cfg.seed)

    seconds: list[list[float]] = [[] for _ in settings]
    rows: list[dict] = [{} for _ in settings]
    with erased_model(bundle, args.erased) as model:
        for r in range(args.repeats):
            order = range(len(settings)) if r % 2 == 0 else reversed(range(len(settings)))
            for i in order:
                start = time.perf_counter()
                row, _ = erasure_row(model, judge, world, pairs.family, pairs.target_prompts, probe, retain, cfg,
                                         samplers[i], progress=False)
                seconds[i].append(time.perf_counter() - start)
                rows[i] = {k: row[k] for k in RATES} | {"images": images(row, cfg.fid_images, len(world.images))}
                print(f"round {r + 1}, setting {settings[i]!r}: {seconds[i][-1]:.1f} s", file=sys.stderr)

    result: dict[str, Any] = {
        "concept": args.concept, "model": args.erased or "base", "hardware": hardware(),
        "precision": resolve_precision(params.sample.precision, bundle.device), "repeats": args.repeats,
        "settings": [
            {"setting": s, "sample": dataclasses.asdict(sp), "unet_calls_per_image": unet_calls(sp.steps, sp.guidance),
             "seconds_median": statistics.median(t), "seconds": t} | row
            for s, sp, t, row in zip(settings, samplers, seconds, rows)
        ],
    }
    print_table(result)
    if args.json:
        save_json(result, args.json)
    return result


def print_table(result: dict[str, Any]) -> None:
    """One line per setting: seconds per row, its ratio to the first setting, and the row's rates."""
    first = result["settings"][0]
    print(f"{result['concept']} ({result['model']}), {result['hardware']}, sampler precision {result['precision']}")
    head = f"{'setting':16s} {'s/row':>6s} {'x first':>7s} {'images':>6s} {'UNet/img':>8s} "
    print(head + " ".join(f"{k:>16s}" for k in RATES))
    for s in result["settings"]:
        ratio = s["seconds_median"] / first["seconds_median"]
        cells = " ".join(f"{s[k]:16.3f}" for k in RATES)
        print(f"{s['setting'] or 'params.yaml':16s} {s['seconds_median']:6.1f} {ratio:7.2f} "
              f"{s['images']:6d} {s['unet_calls_per_image']:8d} {cells}")


if __name__ == "__main__":
    main()

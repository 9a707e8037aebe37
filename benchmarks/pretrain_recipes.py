"""Compare world-model pretraining recipes by what the base model then draws (in-set and out-of-set).

    python benchmarks/pretrain_recipes.py --device cuda \
        --recipe "steps=3000" --recipe "steps=4500 pooled_noise=0.5" [--json out.json]

Each --recipe overrides keys of the `pretrain` section of params.yaml (unknown keys are errors). For each
recipe the script trains the world model with `cdc.pretrain.pretrain_world`, then measures, with the
`sample` sampler and the committed judge, what the `base` stage measures: concept and style accuracy on
the canonical prompts of every target member and `base.n_other_concepts` other concepts, the out-of-set
rate per target family, and the world-FID. It prints one row per recipe and the training seconds.
`--oos-images N` also draws every out-of-set prompt N times (sampler seed 100 onwards) and reports the
rate per family and per prompt: two training seeds of one recipe differed by up to 0.35 on a family
(benchmarks/results/2026-11-24_pretrain_recipes_h100.json), so compare recipes on the larger draw.
Pretraining takes about an hour per recipe on a 2-core CPU: run it where a GPU is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from base_metrics import base_metrics  # noqa: E402

from cdc import evaluate as ev  # noqa: E402
from cdc.judge import JudgeNet, load_judge  # noqa: E402
from cdc.params import Params, load_params, with_overrides  # noqa: E402
from cdc.pretrain import pretrain_world  # noqa: E402
from cdc.system import hardware  # noqa: E402
from cdc.world.data import World, load_world  # noqa: E402


def measure(recipe: str, params: Params, world: World, judge: JudgeNet, args: argparse.Namespace) -> dict:
    """Train one recipe and measure the base model it gives."""
    cfg = with_overrides(params.pretrain, recipe, "pretrain")
    start = time.perf_counter()
    bundle, history = pretrain_world(world, cfg, device=args.device, progress=True)
    seconds = time.perf_counter() - start
    bundle.text.to(args.device)
    bundle.unet.to(args.device)
    sampler = dataclasses.replace(params.sample, batch_size=args.sample_batch)
    row = {"recipe": recipe, "pretrain_seconds": round(seconds, 1), "final_loss": history[-1]["loss"],
           **base_metrics(bundle, judge, world, params.base, sampler)}
    if args.oos_images:
        drawn = ev.draw_out_of_set(bundle, judge, world, args.oos_images, dataclasses.replace(sampler, seed=100),
                                   progress=False)
        row["oos_rate_more_images"] = ev.family_rates(world, drawn)
        row["oos_rate_by_prompt"] = {f: ev.prompt_rates(world, f, d) for f, d in drawn.items()}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", action="append", default=[], help="space-separated key=value overrides")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--world", default=str(REPO / "data/world/built"))
    parser.add_argument("--judge", default=str(REPO / "data/models/judge"))
    parser.add_argument("--sample-batch", type=int, default=256)
    parser.add_argument("--oos-images", type=int, default=0, help="also draw each out-of-set prompt this many times")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    params, world, judge = load_params(args.params), load_world(args.world), load_judge(args.judge)
    rows = []
    print(f"hardware: {hardware()} device: {args.device}")
    for recipe in args.recipe or [""]:
        row = measure(recipe, params, world, judge, args)
        rows.append(row)
        oos = " ".join(f"{f}={v:.2f}" for f, v in row["base_oos_rate"].items())
        print(f"[{recipe or 'params.yaml'}] {row['pretrain_seconds']:.0f} s  acc {row['base_concept_acc']:.3f}"
              f"/{row['base_style_acc']:.3f}  fid {row['world_fid']:.2f}  out-of-set: {oos}", flush=True)
        if args.oos_images:
            more = " ".join(f"{f}={v:.2f}" for f, v in row["oos_rate_more_images"].items())
            print(f"    out-of-set, {args.oos_images} images per prompt: {more}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"hardware": hardware(), "device": args.device, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

"""Choose the pipeline's sampler: what the base model draws under each sampler setting.

    python benchmarks/sampler_settings.py --setting "" --setting "guidance=2.0" --setting "eta=0.0" \
        [--images-per-prompt 8] [--fid-images 120] [--json out.json]

Each --setting overrides keys of the `sample` section of params.yaml (unknown keys are errors; "" is
params.yaml as it is). For each, the committed world model is judged as the `base` stage judges it:
concept and style accuracy on the canonical prompts of every target member and `base.n_other_concepts`
other concepts, the out-of-set rate per target family, and the world-FID, plus the seconds it took.
A stronger guidance or deterministic DDIM may carry paraphrases better or worse, and may push images
off the renders' manifold (accuracy and FID say which): this is the evidence behind params.yaml's
`sample` section. `--tiny` uses a tiny random world UNet (for testing the script only).
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

from cdc.bundle import load_bundle, tiny_world_bundle  # noqa: E402
from cdc.judge import load_judge  # noqa: E402
from cdc.params import load_params, with_overrides  # noqa: E402
from cdc.system import hardware, resolve_precision  # noqa: E402
from cdc.world.data import load_world  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", action="append", default=[], help="space-separated key=value overrides")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--model", default=str(REPO / "data/models/world"))
    parser.add_argument("--world", default=str(REPO / "data/world/built"))
    parser.add_argument("--judge", default=str(REPO / "data/models/judge"))
    parser.add_argument("--images-per-prompt", type=int, default=None, help="default: base.images_per_prompt")
    parser.add_argument("--fid-images", type=int, default=120, help="seeded subset of the renders (0: all)")
    parser.add_argument("--n-other", type=int, default=None, help="default: base.n_other_concepts")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    base = dataclasses.replace(params.base, **{k: v for k, v in {
        "images_per_prompt": args.images_per_prompt, "n_other_concepts": args.n_other}.items() if v is not None})
    world, judge = load_world(args.world), load_judge(args.judge)
    bundle = tiny_world_bundle() if args.tiny else load_bundle("world", args.model)
    print(f"hardware: {hardware()}; {base.images_per_prompt} images per prompt; "
          f"world-FID on {args.fid_images or 'all'} renders", flush=True)
    rows = []
    for setting in args.setting or [""]:
        sampler = with_overrides(params.sample, setting, "sample")
        start = time.perf_counter()
        row = base_metrics(bundle, judge, world, base, sampler, fid_images=args.fid_images or None)
        row = {"setting": setting, "sample": dataclasses.asdict(sampler),
               "precision": resolve_precision(sampler.precision, bundle.device),
               "seconds": round(time.perf_counter() - start, 1), **row}
        rows.append(row)
        oos = " ".join(f"{f}={v:.2f}" for f, v in row["base_oos_rate"].items())
        print(f"[{setting or 'params.yaml'}] {row['seconds']:.0f} s  acc {row['base_concept_acc']:.3f}"
              f"/{row['base_style_acc']:.3f}  fid {row['world_fid']:.2f}  out-of-set: {oos}  "
              f"(min {min(row['base_oos_rate'].values()):.2f})", flush=True)
    result = {"hardware": hardware(), "tiny": args.tiny, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()

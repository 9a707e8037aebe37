"""DoCo's gradient-surgery ablation: the same erase with each surgery rule, evaluated like the pipeline.

    python benchmarks/surgery_ablation.py --concept church --surgery pcgrad --surgery sum [--json out.json]

For each rule the script trains DoCo with params.yaml's `erase.doco` settings and only `surgery`
changed, on the anchors the `anchors` stage wrote (`dvc repro anchors` first), and evaluates it with
`cdc.evaluate.erasure_row` exactly as the `evaluate` stage does (same prompts, seeds and judge). The
pipeline's own rule (`erase.doco.surgery`) is the row in data/eval/<concept>.json; repeat it here to
see it side by side. Rules: cosine (current release), pcgrad (first release), sum (no surgery: the
unlearning and preservation gradients are added with weight lam).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cdc import evaluate as ev  # noqa: E402
from cdc.bundle import load_bundle  # noqa: E402
from cdc.erase import Pairs, run_method  # noqa: E402
from cdc.io import load_json  # noqa: E402
from cdc.judge import load_judge  # noqa: E402
from cdc.methods import remove_lora  # noqa: E402
from cdc.params import load_params  # noqa: E402
from cdc.world.data import load_world  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="church")
    parser.add_argument("--surgery", action="append", default=[], help="cosine | pcgrad | sum (repeatable)")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    params = load_params(args.params)
    anchors = REPO / "data/anchors" / args.concept
    if not (anchors / "pairs.json").is_file():
        raise SystemExit(f"no anchors for {args.concept!r} in {anchors}: run `dvc repro anchors` first")
    raw = load_json(anchors / "pairs.json")
    pairs = Pairs(**{k: v for k, v in raw.items() if k != "probe"})
    samples = dict(np.load(anchors / "samples.npz"))
    world = load_world(REPO / "data/world/built")
    judge = load_judge(REPO / "data/models/judge")
    bundle = load_bundle("world", REPO / "data/models/world")
    cfg = params.evaluate
    retain = ev.other_concepts(world, cfg.n_retain, cfg.seed)
    rows = []
    for rule in args.surgery or [params.erase.doco.surgery]:
        doco = dataclasses.replace(params.erase.doco, surgery=rule)
        start = time.perf_counter()
        unet, history = run_method(bundle, "doco", pairs, samples, doco)
        seconds = time.perf_counter() - start
        row, _ = ev.erasure_row(bundle, judge, world, raw["family"], raw["target_prompts"], raw["probe"], retain,
                                cfg, params.sample, unet=unet, progress=False)
        fired = [h["surgery_fired"] for h in history if h.get("surgery_fired") is not None]
        row = {"concept": args.concept, "surgery": rule, **row, "seconds": round(seconds, 1),
               "surgery_fired": float(np.mean(fired)) if fired else None}
        rows.append(row)
        remove_lora(bundle.unet)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

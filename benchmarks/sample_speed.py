"""Sampling throughput of the world model: the pipeline's sampler as it is, next to candidate speed-ups.

    python benchmarks/sample_speed.py --model data/models/world --images 64 --repeats 3 [--json out.json]

Sampling is most of what `dvc repro` spends after pretraining (anchor samples and every evaluation), so
this is where a faster pipeline would come from. Variants, each through `cdc.sampler.sample` with the
`sample` section of the params file (params.yaml by default: steps, guidance, eta, batch size) on the same
prompts and seeds:

  fp32           the UNet as loaded, batch size from params.yaml, float32 arithmetic
  channels_last  the UNet's weights in channels-last memory order (oneDNN picks NHWC kernels)
  batch x2       twice params.yaml's batch size
  bf16 autocast  the sampler's `precision="bf16"` (the UNet under torch.autocast, bfloat16): fast where
                 the CPU has AVX512-BF16 or AMX (what `sample.precision: auto` picks), slow without, and
                 more than float round-off (the pixel difference column says how far)

Runs are interleaved (A B C, C B A, ...) over `--repeats` rounds so slow drift of the machine hits every
variant alike. For each variant it prints the median images per second, the ratio to fp32 and the
largest pixel difference from fp32's images (the sampler promises per-image seeding, so a variant
that changes only kernels should differ by float round-off: a few levels out of 255 at most; the mean
difference is printed too).
With the judge (`--judge`, the committed one by default; skipped, and said so, where that folder does not
exist) it also prints the share of images that the judge sees as the same concept and style as fp32's:
what a variant would change in the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cdc.bundle import ModelBundle, load_bundle
from cdc.judge import load_judge, predict
from cdc.sampler import sample
from cdc.stages.params import SampleParams, load_params
from cdc.system import hardware, resolve_precision

PROMPTS = ("a church", "a house, openmoji style", "a fish", "an articulated lorry", "a parachute", "a dagger",
           "a hammer, twemoji style", "a tropical fish")


def variants(sampler: SampleParams) -> dict[str, tuple[Callable[[ModelBundle], None], int, str]]:
    """name -> (how to prepare the bundle's UNet, batch size, the sampler's precision)."""
    def as_loaded(bundle: ModelBundle) -> None:
        bundle.unet.to(memory_format=torch.contiguous_format)

    def channels_last(bundle: ModelBundle) -> None:
        bundle.unet.to(memory_format=torch.channels_last)

    return {"fp32": (as_loaded, sampler.batch_size, "fp32"),
            "channels_last": (channels_last, sampler.batch_size, "fp32"),
            "batch x2": (as_loaded, 2 * sampler.batch_size, "fp32"),
            "bf16 autocast": (as_loaded, sampler.batch_size, "bf16")}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="data/models/world", help="a saved world model folder")
    parser.add_argument("--params", default="params.yaml", help="its `sample` section is the fp32 variant")
    parser.add_argument("--images", type=int, default=64, help="images per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--judge", default="data/models/judge",
                        help="also the share of images judged the same (concept and style) as fp32's")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sampler = load_params(args.params).sample
    bundle = load_bundle("world", args.model)
    weights = args.model
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.images)]
    seeds = list(range(args.images))
    arms = variants(sampler)
    auto = resolve_precision("auto", bundle.device)
    print(f"hardware: {hardware()}; weights: {weights}; {args.images} images, {sampler.steps} steps, "
          f"guidance {sampler.guidance}, eta {sampler.eta}; precision 'auto' is {auto} here", flush=True)

    seconds: dict[str, list[float]] = {k: [] for k in arms}
    images: dict[str, np.ndarray] = {}
    names = list(arms)
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            prepare, batch, precision = arms[name]
            prepare(bundle)
            cfg = dataclasses.replace(sampler, batch_size=batch, precision=precision)
            if r == 0:  # untimed first call per variant: first-call allocations, oneDNN kernel choice
                sample(bundle, prompts[:2], seeds[:2], dataclasses.replace(cfg, batch_size=2), progress=False)
            start = time.perf_counter()
            images[name] = sample(bundle, prompts, seeds, cfg, progress=False)
            seconds[name].append(time.perf_counter() - start)
    arms["fp32"][0](bundle)

    judge = load_judge(args.judge) if Path(args.judge).exists() else None
    if judge is None:
        print(f"no judge at {args.judge}: judged-the-same shares skipped", flush=True)
    verdicts = {k: predict(judge, v) for k, v in images.items()} if judge is not None else {}
    base = statistics.median(seconds["fp32"])
    rows = {}
    for name in names:
        med = statistics.median(seconds[name])
        diff = np.abs(images[name].astype(np.int16) - images["fp32"].astype(np.int16))
        rows[name] = {"median_s": med, "images_per_s": args.images / med, "speedup": base / med,
                      "max_pixel_diff": int(diff.max()), "mean_pixel_diff": float(diff.mean()),
                      "seconds": seconds[name]}
        same = ""
        if verdicts:
            mine, ref = verdicts[name], verdicts["fp32"]
            agree = np.logical_and(*(np.asarray(mine[k]) == np.asarray(ref[k]) for k in ("concept", "style")))
            rows[name]["judged_same"] = float(agree.mean())
            same = f", judged the same {agree.mean():.3f}"
        print(f"{name:14s} {args.images / med:7.2f} images/s  speed-up {base / med:5.2f}x  "
              f"pixel diff vs fp32: max {diff.max()}, mean {diff.mean():.3f}{same}", flush=True)
    result = {"hardware": hardware(), "python": platform.python_version(), "torch": torch.__version__,
              "weights": weights, "params": args.params, "judge": args.judge if judge is not None else None,
              "images": args.images, "auto_precision": auto,
              "sample": dataclasses.asdict(sampler), "variants": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()

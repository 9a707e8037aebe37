"""What one outer iteration of AdvUnlearn costs: full AT, fast AT, no attack, and the inner attack alone.

    python benchmarks/advunlearn_speed.py [--model data/models/world] [--steps 6] [--burn-in 1] [--repeats 2] \
        [--released-steps 30] [--params params.yaml] [--json out.json]

Every variant runs `train_advunlearn` on the same fixed data, with params.yaml's settings and no warm-up, so
every timed step attacks its batch first:

  clean     erase.advunlearn with attack_steps=0: the upper step alone (ESD loss + retain regulariser)
  fast      erase.advunlearn_fast: one sign-gradient inner step (fast AT)
  full      erase.advunlearn: its attack_steps PGD steps (3 on the world)
  released  erase.advunlearn with attack_steps=--released-steps (30, the released recipe's inner loop)

and the inner attack alone (`soft_prompt_attack` with full's steps, on one batch against a fresh encoder copy).
Per-iteration seconds are the differences of `train_advunlearn`'s own history clock (setup excluded), after
`--burn-in` untimed steps; variants interleave over `--repeats` rounds so drift hits all alike. The ratios
printed are the paper's cost claim: fast AT against full AT, at the world's and at the released inner steps.
Latents are random N(0, 1) tensors of the UNet's input shape: a step's cost does not depend on their content.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from cdc.bundle import ModelBundle, load_bundle
from cdc.embeddings import candidate_ids, insert_prefix
from cdc.encoder_io import trainable_copy
from cdc.io import save_json
from cdc.methods.advunlearn import Models, random_prefix, soft_prompt_attack, train_advunlearn
from cdc.methods.config import AdvUnlearnConfig
from cdc.methods.train import encode, make_generator
from cdc.stages.params import load_params
from cdc.system import hardware

TARGETS = ("a church", "a church, twemoji style", "a chapel, openmoji style", "an emoji of a church")
RETAINS = ("a cat", "a tree, twemoji style", "a car, openmoji style", "an emoji of a hat")
VARIANTS = ("clean", "fast", "full", "released")
TARGET_FAST_RATIO = 5.0  # the aim: fast AT at least 5x cheaper per iteration than full AT


def configs(full: AdvUnlearnConfig, fast: AdvUnlearnConfig, steps: int, released: int) -> dict[str, AdvUnlearnConfig]:
    """Each variant's config: the params file's, `steps` outer steps, no warm-up, one history row per step."""
    run = dict(steps=steps, warmup_steps=0, log_every=1)
    return {"clean": dataclasses.replace(full, attack_steps=0, **run),
            "fast": dataclasses.replace(fast, **run),
            "full": dataclasses.replace(full, **run),
            "released": dataclasses.replace(full, attack_steps=released, **run)}


def fixed_data(bundle: ModelBundle, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Target and retain latents (n, C, h, w) each, random and seeded."""
    cfg = bundle.unet.config
    g = torch.Generator("cpu").manual_seed(seed)
    shape = (n, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def step_seconds(bundle: ModelBundle, cfg: AdvUnlearnConfig, x_tgt: torch.Tensor, x_ret: torch.Tensor,
                 burn_in: int) -> list[float]:
    """Seconds of each outer step after the burn-in, from train_advunlearn's history clock."""
    _, history = train_advunlearn(bundle, TARGETS, x_tgt, RETAINS, x_ret, cfg, progress=False)
    clock = [0.0, *(h["seconds"] for h in history)]
    return [b - a for a, b in zip(clock, clock[1:])][burn_in:]


def inner_seconds(bundle: ModelBundle, cfg: AdvUnlearnConfig, x_tgt: torch.Tensor, runs: int) -> list[float]:
    """Seconds of `runs` inner attacks alone (cfg.attack_steps steps on one batch), as the outer loop calls them."""
    text, _ = trainable_copy(bundle.text, cfg.text_layers)
    models = Models(bundle.unet, text, [])
    gen = make_generator(cfg.seed)
    prompts = [TARGETS[i % len(TARGETS)] for i in range(cfg.batch_size)]
    x0 = x_tgt[: cfg.batch_size].to(bundle.device, bundle.dtype)
    candidates = candidate_ids(bundle.text, "all")
    adv = insert_prefix(text, text.tokenize(prompts), candidates[: cfg.attack_k])
    context0 = encode(bundle.text, prompts, bundle.device, bundle.dtype)
    out = []
    for _ in range(runs):
        init = random_prefix(text, candidates, len(prompts), cfg.attack_k, gen)
        start = time.perf_counter()
        soft_prompt_attack(models, bundle.scheduler, x0, adv, context0, init, cfg.attack_steps, cfg.attack_lr,
                           cfg.attack_method, gen)
        out.append(time.perf_counter() - start)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"),
                    help="its erase.advunlearn and erase.advunlearn_fast sections are the runs")
    ap.add_argument("--model", default="data/models/world", help="world model folder")
    ap.add_argument("--steps", type=int, default=6, help="timed outer steps per run (default 6)")
    ap.add_argument("--burn-in", type=int, default=1, help="untimed steps at the start of every run (default 1)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds of the variants (default 2)")
    ap.add_argument("--released-steps", type=int, default=30, help="inner steps of the released recipe (30)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    args = ap.parse_args(argv)
    for name in ("steps", "repeats", "released_steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.burn_in < 0:
        ap.error("--burn-in must be >= 0")
    if not Path(args.model).is_dir():
        ap.error(f"--model {args.model} is not a folder (the world model: data/models/world)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the variants, print per-iteration seconds and the ratios, write --json; returns the results."""
    args = parse_args(argv)
    params = load_params(args.params)
    full, fast = params.erase.advunlearn, params.erase.advunlearn_fast
    runs = configs(full, fast, args.burn_in + args.steps, args.released_steps)
    bundle = load_bundle("world", args.model)
    x_tgt, x_ret = fixed_data(bundle, max(full.batch_size, full.retain_batch, 8), full.seed)
    print(f"advunlearn_speed: world model {args.model}, {hardware()}, batch {full.batch_size} + retain "
          f"{full.retain_batch}, {args.repeats} rounds x ({args.burn_in} untimed + {args.steps} timed) steps")
    times: dict[str, list[float]] = {v: [] for v in (*VARIANTS, "inner")}
    for r in range(args.repeats):
        for name in VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS)):  # ABCD DCBA: drift hits all alike
            times[name] += step_seconds(bundle, runs[name], x_tgt, x_ret, args.burn_in)
        times["inner"] += inner_seconds(bundle, full, x_tgt, args.steps)
    median = {k: statistics.median(v) for k, v in times.items()}
    inner_steps = {"clean": 0, "fast": fast.attack_steps, "full": full.attack_steps, "released": args.released_steps,
                   "inner": full.attack_steps}
    for name, seconds in median.items():
        what = "inner attack alone" if name == "inner" else f"outer iteration, {name}"
        relative = seconds / median["clean"]
        print(f"  {what:<34} {inner_steps[name]:>3} inner steps  {seconds:7.3f} s  (x{relative:.2f} clean)")
    ratios = {"full_over_fast": median["full"] / median["fast"],
              "released_over_fast": median["released"] / median["fast"],
              "inner_share_of_full": median["inner"] / median["full"]}
    print(f"  fast AT is {ratios['full_over_fast']:.2f}x cheaper than full AT with {full.attack_steps} inner steps, "
          f"{ratios['released_over_fast']:.2f}x with the released {args.released_steps} "
          f"(aim: >= {TARGET_FAST_RATIO:g}x); the inner attack is {ratios['inner_share_of_full']:.0%} of a full step")
    per_concept = {k: median[k] * v.steps for k, v in (("full", full), ("fast", fast))}
    print(f"  projected erase time at params.yaml's {full.steps} steps (no warm-up discount): "
          f"full {per_concept['full']:.0f} s, fast {per_concept['fast']:.0f} s")
    results = {"hardware": hardware(), "model": str(args.model), "steps": args.steps, "repeats": args.repeats,
               "burn_in": args.burn_in, "inner_steps": inner_steps, "median_s": median, "ratios": ratios,
               "projected_erase_s": per_concept, "times_s": times}
    if args.json:
        save_json(results, args.json)
    return results


if __name__ == "__main__":
    main()

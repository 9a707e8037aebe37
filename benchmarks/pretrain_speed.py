"""Pretraining step cost of the world model: float32, bf16 mixed precision, and the attention kernel, side by side.

    python benchmarks/pretrain_speed.py --steps 30 --repeats 2 [--json out.json]

Pretraining is the one stage whose time issue 3 bounds (60 min on a 2-core CPU). Both arms run the
`pretrain` stage's own loop (`cdc.stages.pretrain.train_world_model`) on the architecture, batch size and
every other knob of the params file's `pretrain` section (params.yaml by default) but precision and
attention, with random weights, random renders (N(0, 1) in UNet space) and random float16 contexts of
MiniLM's shape: a step's cost does not depend on what the tensors hold.

  fp32          precision "fp32", fused attention (PyTorch SDPA): float32 throughout
  bf16          precision "bf16", fused attention: the UNet's forward under bf16 autocast, float32
                weights, optimiser and EMA (what `pretrain.precision: auto` picks where the CPU has
                AVX512-BF16 or AMX)
  bf16 unfused  as bf16, with the unfused attention kernel (what `pretrain.attention: auto` picks on the
                CPU, `cdc.attention`)

Each run times its steps from the loop's own clock (`log_every=1`) after `--burn-in` untimed steps.
The arms are interleaved (the order rotates every round) over `--repeats` rounds so slow drift of the
machine hits all alike. It prints the median seconds per step, each arm's ratio to fp32, and what
the params file's step count would take at each median. A params file with a small `pretrain` section
(`--params`) makes a quick check that the script works.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
from pathlib import Path

import numpy as np
import torch

from cdc.bundle import make_world_scheduler
from cdc.codec import SpaceToDepthCodec
from cdc.stages.params import PretrainParams, load_params
from cdc.stages.pretrain import train_world_model, world_unet_from_params
from cdc.system import hardware, native_bf16
from cdc.text import MiniLMEncoder

RENDERS = 64  # random renders the batches are drawn from (a step's cost does not depend on how many)
ARMS = {"fp32": ("fp32", "sdpa"), "bf16": ("bf16", "sdpa"), "bf16 unfused": ("bf16", "unfused")}  # precision, attention


def time_steps(cfg: PretrainParams, image_size: int, dim: int, precision: str, attention: str, steps: int,
               burn_in: int, seed: int) -> list[float]:
    """Seconds of each timed step of one fresh `train_world_model` run (cfg's knobs, this precision and
    attention kernel, `burn_in + steps` steps, the clock read every step)."""
    total = burn_in + steps  # a shorter run than the stage's, so a shorter warm-up (the lr does not change the cost)
    cfg = dataclasses.replace(cfg, steps=total, warmup_steps=min(cfg.warmup_steps, total - 1), precision=precision,
                              attention=attention, seed=seed, log_every=1)
    torch.manual_seed(seed)
    codec = SpaceToDepthCodec(factor=2)
    unet = world_unet_from_params(cfg, image_size, dim, codec)
    h = image_size // codec.downsample
    latents = torch.randn(RENDERS, codec.channels, h, h)  # (N, C, h, w)
    contexts = torch.randn(4 * RENDERS, cfg.max_length + 1, dim).half()  # (P, L+1, D)
    index = np.arange(4 * RENDERS) % RENDERS
    null = torch.zeros(1, cfg.max_length + 1, dim)
    scheduler = make_world_scheduler(cfg.prediction_type, cfg.beta_schedule, cfg.num_train_timesteps)
    _, history = train_world_model(unet, scheduler, latents, contexts, index, null, cfg, progress=False)
    clock = [0.0] + [row["seconds"] for row in history]
    return [b - a for a, b in zip(clock, clock[1:])][burn_in:]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="its `pretrain` section is what is timed")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--burn-in", type=int, default=3, help="untimed steps at the start of every run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1 or args.burn_in < 0:
        parser.error("--steps and --repeats must be >= 1, --burn-in >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    cfg = params.pretrain
    dim = MiniLMEncoder(cfg.max_length, cfg.pooled_scale).dim  # the width of the world model's context
    print(f"hardware: {hardware()}; native bf16: {native_bf16('cpu')}; UNet of {args.params} "
          f"(block channels {cfg.block_channels}), batch {cfg.batch_size}", flush=True)

    names = list(ARMS)
    seconds: dict[str, list[float]] = {k: [] for k in ARMS}
    for r in range(args.repeats):
        for arm in names[r % len(names):] + names[: r % len(names)]:
            seconds[arm] += time_steps(cfg, params.world.size, dim, *ARMS[arm], args.steps, args.burn_in, seed=r)
    rows = {}
    for arm in ARMS:
        med = statistics.median(seconds[arm])
        rows[arm] = {"precision": ARMS[arm][0], "attention": ARMS[arm][1], "median_s": med,
                     "min_s": min(seconds[arm]), "max_s": max(seconds[arm]),
                     "projected_min": med * cfg.steps / 60, "seconds": seconds[arm]}
        print(f"{arm}: {med:.3f} s/step (min {min(seconds[arm]):.3f}, max {max(seconds[arm]):.3f}); "
              f"{cfg.steps} steps -> {med * cfg.steps / 60:.1f} min", flush=True)
    ratios = {arm: rows[arm]["median_s"] / rows["fp32"]["median_s"] for arm in names[1:]}
    for arm, ratio in ratios.items():
        print(f"ratio {arm} / fp32 = {ratio:.3f}", flush=True)
    result = {"hardware": hardware(), "python": platform.python_version(), "torch": torch.__version__,
              "native_bf16": native_bf16("cpu"), "params": args.params, "block_channels": cfg.block_channels,
              "batch_size": cfg.batch_size,
              "params_steps": cfg.steps, "ratios_to_fp32": ratios, "arms": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

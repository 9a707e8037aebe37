"""Per-step cost of DoCo against a plain LoRA fine-tune step, on the same data and the same LoRA.

    python benchmarks/erase_speed.py [--model data/models/world] [--preset world|sd] [--random-world] \
        [--steps 20] [--batch-size B] [--device cpu] [--full-erase] [--params params.yaml] [--json out.json]

Four variants run through the project's own code, with the same LoRA group and rank (params.yaml's
`erase.doco` section, each overridable on the command line):

  plain        `plain_lora_step` below: one LoRA denoising (MSE) step on B rows
  doco-warmup  `train_doco` with every step a warm-up step (discriminator only)
  doco-full    `train_doco` with no warm-up: generator + discriminator + gradient surgery
  plain-2b     the plain step on 2B rows, as many rows as a full DoCo step trains on
  frozen-b     the frozen model's no-grad forward on B rows, which a full DoCo step adds to its 2B rows
  rdc-full     `train_rdc` (robust domain correction, ours) with no warm-up, params.yaml's `erase.rdc` adversary
               knobs on the same LoRA and batch; the issue's aim: at most 3x a DoCo step

Each timed run adds a fresh LoRA, runs `--burn-in` untimed steps and then `--steps` timed ones;
runs are interleaved (ABCD DCBA ABCD ...) over `--repeats` rounds so slow drift of the machine hits every
variant alike. DoCo's per-step times come from `train_doco`'s own history clock (setup such as
adding the LoRA, building the discriminator and encoding prompts is excluded, as it is for plain).
The reported ratio is median(doco-full step) / median(plain-2b step); the aim is <= 1.2x. Its floor is
(plain-2b + frozen-b) / plain-2b: what DoCo's algorithm computes beyond training 2B rows, with nothing else.

Every step draws B rows (with replacement, as `train_doco` does) from ONE fixed set of B anchor
latents and B target/anchor prompt pairs; noise and timesteps come from the same seeded generator
in every run. The latents are random N(0, 1) tensors of the UNet's input shape: the cost of a step
does not depend on their content. `--random-world` builds the world model's architecture from the
params file (`pretrain`, `world.size`) with random weights instead of loading `--model`: the step cost
of the real model before (or without) pretraining, and, with a small params file, a quick check
that the script works.

`--full-erase` also times one whole DoCo erase (setup included) with the params file's `erase.doco`
settings as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cdc.bundle import ModelBundle, load_bundle, make_world_scheduler
from cdc.codec import SpaceToDepthCodec
from cdc.io import save_json
from cdc.lora import GROUPS, add_lora, base_model, lora_parameters, remove_lora, tuner_layers
from cdc.losses import mse, noisy_latents, target_for, unet_pred
from cdc.methods.doco import train_doco
from cdc.methods.domain import DocoConfig
from cdc.methods.rdc import RdcConfig, train_rdc
from cdc.methods.surgery import MODES, clip_grads
from cdc.methods.train import ErasureData, apply_step, grads_of, make_generator, make_optimizer, paired_data
from cdc.stages.pretrain import world_unet_from_params
from cdc.stages.schema import Params, load_params
from cdc.text import MiniLMEncoder

VARIANTS = ("plain", "doco-warmup", "doco-full", "plain-2b", "frozen-b", "rdc-full")
LABELS = {
    "plain": "plain LoRA step",
    "plain-2b": "plain LoRA step, 2B rows",
    "doco-warmup": "DoCo warm-up (D only)",
    "doco-full": "DoCo full (G+D+surgery)",
    "frozen-b": "frozen forward, B rows",
    "rdc-full": "RDC full (adversaries+G+D)",
}
TARGET_RDC_RATIO = 3.0  # the aim: an RDC step costs at most 3 DoCo steps
TARGET_RATIO = 1.2  # the aim: a DoCo step costs at most 1.2 plain LoRA steps on the same 2B rows
TARGET_ERASE_SECONDS = 45.0  # the aim: one DoCo erase on the world in <= 45 s on 2 CPU cores
TEMPLATES = ("{}", "an emoji of {}", "{} icon", "a picture of {}")
TARGET, ANCHOR = "a church", "a house"
LATENT_NOTE = "anchor latents are random N(0,1) tensors of the UNet input shape (step cost does not depend on content)"


# ----------------------------------------------------------------------------------------- memory
def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Peak resident memory in MiB: VmHWM since the last reset on Linux, else the process-lifetime maximum."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _reset_peak(device: torch.device) -> None:
    _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------- model
def random_world_bundle(params: Params, device: torch.device) -> ModelBundle:
    """The world model's architecture from the params file (`pretrain`, `world.size`) with RANDOM weights,
    built as the `pretrain` stage builds it: the step cost of the real model without waiting for pretraining
    (timing does not depend on the weights)."""
    cfg = params.pretrain
    torch.manual_seed(cfg.seed)
    text = MiniLMEncoder(cfg.max_length, cfg.pooled_scale).to(device)
    codec = SpaceToDepthCodec(factor=2)
    unet = world_unet_from_params(cfg, params.world.size, text.dim, codec)
    scheduler = make_world_scheduler(cfg.prediction_type, cfg.beta_schedule, cfg.num_train_timesteps)
    return ModelBundle(text=text, unet=unet.to(device).eval(), scheduler=scheduler, codec=codec, preset="world")


def load_model(args: argparse.Namespace, params: Params) -> tuple[ModelBundle, str, str]:
    """(bundle, label, kind): kind "model" (the --model folder) or "random-world"."""
    device = torch.device(args.device)
    if args.random_world:
        label = f"RANDOM-WEIGHT world UNet, architecture from {args.params} (--random-world; timing only)"
        return random_world_bundle(params, device), label, "random-world"
    return load_bundle(args.preset, args.model, device=device), f"{args.preset} model {args.model}", "model"


def fixed_data(bundle: ModelBundle, batch_size: int, seed: int) -> tuple[torch.Tensor, list[str], list[str]]:
    """One fixed set of B random anchor latents (B, C, h, w) and B paired target/anchor prompts."""
    cfg = bundle.unet.config
    g = torch.Generator("cpu").manual_seed(seed)
    latents = torch.randn((batch_size, cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=g)
    targets = [TEMPLATES[i % len(TEMPLATES)].format(TARGET) for i in range(batch_size)]
    anchors = [TEMPLATES[i % len(TEMPLATES)].format(ANCHOR) for i in range(batch_size)]
    return latents, targets, anchors


# ----------------------------------------------------------------------------------------- timing
def plain_lora_step(
    unet: torch.nn.Module,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler,
    x0: torch.Tensor,
    context: torch.Tensor,
    generator: torch.Generator,
    max_grad_norm: float,
) -> float:
    """One plain LoRA denoising fine-tune step (MSE to the eps/v target) on (x0 (B, C, h, w), context
    (B, L, D)), built from the same pieces as the methods: the baseline DoCo's overhead is measured against.
    Returns the loss (a float, so the step has finished when it returns)."""
    x_t, noise, t = noisy_latents(scheduler, x0, generator)
    loss = mse(unet_pred(unet, x_t, t, context), target_for(scheduler, x0, noise, t))
    grads, _ = clip_grads(grads_of(loss, params), max_grad_norm)
    apply_step(optimizer, params, grads)
    return float(loss.detach())


def time_plain(bundle, latents, targets, cfg: DocoConfig, total: int, rows: int) -> list[float]:
    """Seconds of each of `total` plain LoRA steps on `rows` rows (batch draw included, as in train_doco's clock)."""
    unet = bundle.unet
    data = paired_data(bundle, latents, torch.arange(latents.shape[0]), targets)
    add_lora(unet, cfg.lora_group, cfg.lora_rank, cfg.lora_alpha, cfg.seed)
    try:
        params = lora_parameters(unet)
        opt = make_optimizer(params, cfg.lr, cfg.weight_decay)
        gen = make_generator(cfg.seed)
        times = []
        for _ in range(total):
            start = time.perf_counter()
            x0, ctx = data.batch(rows, gen)
            plain_lora_step(unet, params, opt, bundle.scheduler, x0, ctx, gen, cfg.max_grad_norm)
            times.append(time.perf_counter() - start)
        return times
    finally:
        remove_lora(unet)


def time_doco(bundle, latents, targets, anchors, cfg: DocoConfig, total: int, warmup_only: bool) -> list[float]:
    """Seconds of each of `total` train_doco steps, from its history clock (one row per step)."""
    # A full run needs one LoRA step (DocoConfig checks warmup_steps < steps): the warm-up-only variant
    # runs one step more and drops it.
    steps = total + 1 if warmup_only else total
    run = dataclasses.replace(cfg, steps=steps, warmup_steps=total if warmup_only else 0, log_every=1)
    try:
        _, history = train_doco(bundle, targets, anchors, latents, run, progress=False)
    finally:
        remove_lora(bundle.unet)
    clock = [row["seconds"] for row in history][:total]
    return [b - a for a, b in zip([0.0, *clock[:-1]], clock)]


def time_frozen(bundle, latents, targets, cfg: DocoConfig, total: int) -> list[float]:
    """Seconds of each of `total` no-grad forwards of the frozen model (LoRA off) on B rows: the call a full DoCo
    step makes beyond its 2B trained rows (D's "real" x̂0), so plain-2b + frozen-b is the floor of a DoCo step."""
    unet = bundle.unet
    data = paired_data(bundle, latents, torch.arange(latents.shape[0]), targets)
    add_lora(unet, cfg.lora_group, cfg.lora_rank, cfg.lora_alpha, cfg.seed)
    try:
        layers, gen, times = tuner_layers(unet), make_generator(cfg.seed), []
        for _ in range(total):
            start = time.perf_counter()
            x0, ctx = data.batch(cfg.batch_size, gen)
            x_t, _, t = noisy_latents(bundle.scheduler, x0, gen)
            with torch.no_grad(), base_model(unet, layers):
                float(unet_pred(unet, x_t, t, ctx).sum())  # a float, so the call has finished
            times.append(time.perf_counter() - start)
        return times
    finally:
        remove_lora(unet)


def time_rdc(bundle, latents, targets, anchors, cfg: RdcConfig, total: int) -> list[float]:
    """Seconds of each of `total` train_rdc steps (no warm-up), from its history clock; the target samples are the
    same latents as the anchor side (a step's cost does not depend on their content)."""
    run = dataclasses.replace(cfg, steps=total, warmup_steps=0, log_every=1)
    index = list(range(latents.shape[0]))
    data = ErasureData(targets, anchors, latents, index, latents, index)
    try:
        _, history = train_rdc(bundle, data, run, progress=False)
    finally:
        remove_lora(bundle.unet)
    clock = [row["seconds"] for row in history]
    return [b - a for a, b in zip([0.0, *clock[:-1]], clock)]


def run_variant(name: str, bundle, latents, targets, anchors, cfg: DocoConfig, total: int,
                rdc: RdcConfig | None = None) -> list[float]:
    if name == "rdc-full":
        return time_rdc(bundle, latents, targets, anchors, rdc, total)
    if name == "frozen-b":
        return time_frozen(bundle, latents, targets, cfg, total)
    if name.startswith("plain"):
        rows = 2 * cfg.batch_size if name == "plain-2b" else cfg.batch_size
        return time_plain(bundle, latents, targets, cfg, total, rows)
    return time_doco(bundle, latents, targets, anchors, cfg, total, warmup_only=name == "doco-warmup")


# ----------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="its erase.doco section is the run")
    ap.add_argument("--model", default="data/models/world", help="model folder (world) or SD folder/hub id (sd)")
    ap.add_argument("--preset", choices=("world", "sd"), default="world")
    ap.add_argument(
        "--random-world",
        action="store_true",
        help="the world model's architecture (--params) with random weights instead of --model",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run (default 20)")
    ap.add_argument("--burn-in", type=int, default=2, help="untimed steps at the start of every run (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the variants (default 3)")
    ap.add_argument("--batch-size", type=int, default=None, help="B (default: erase.doco.batch_size)")
    ap.add_argument("--lora-group", choices=GROUPS, default=None, help="default: erase.doco.lora_group")
    ap.add_argument("--lora-rank", type=int, default=None, help="default: erase.doco.lora_rank")
    ap.add_argument("--surgery", choices=MODES, default=None, help="default: erase.doco.surgery")
    ap.add_argument("--seed", type=int, default=None, help="default: erase.doco.seed")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    ap.add_argument("--full-erase", action="store_true", help="also time one whole DoCo erase (erase.doco as it is)")
    args = ap.parse_args(argv)
    for name in ("steps", "repeats", "batch_size", "lora_rank"):
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.burn_in < 0:
        ap.error("--burn-in must be >= 0")
    if not args.random_world and args.preset == "world" and not Path(args.model).is_dir():
        ap.error(f"world model folder {args.model!r} not found: `dvc repro pretrain`, or time --random-world")
    return args


def run_config(args: argparse.Namespace, doco: DocoConfig) -> DocoConfig:
    """The params file's erase.doco with the command line's overrides (those given)."""
    given = {"batch_size": args.batch_size, "lora_group": args.lora_group, "lora_rank": args.lora_rank,
             "surgery": args.surgery, "seed": args.seed}
    return dataclasses.replace(doco, **{k: v for k, v in given.items() if v is not None})


def _summary(times: list[float], per_round: list[list[float]], peak: float) -> dict[str, Any]:
    return {
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "min_s": min(times),
        "max_s": max(times),
        "per_round_median_s": [statistics.median(r) for r in per_round],
        "n_steps": len(times),
        "peak_rss_mb": peak,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write --json; returns the results dict."""
    args = parse_args(argv)
    old_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, print)
    finally:
        torch.set_num_threads(old_threads)


def _run(args: argparse.Namespace, log) -> dict[str, Any]:
    device = torch.device(args.device)
    params = load_params(args.params)
    cfg = run_config(args, params.erase.doco)
    # RDC on the same LoRA, batch and DoCo knobs as the timed DoCo run, with its own adversary knobs
    doco_fields = {f.name for f in dataclasses.fields(DocoConfig)}
    shared = {k: v for k, v in dataclasses.asdict(cfg).items() if k in doco_fields}
    rdc = dataclasses.replace(params.erase.rdc, **shared)
    bundle, label, kind = load_model(args, params)
    latents, targets, anchors = fixed_data(bundle, cfg.batch_size, cfg.seed)
    total = args.burn_in + args.steps
    log(f"erase_speed: {label}")
    log(
        f"  device {device}, {torch.get_num_threads()} threads, batch {cfg.batch_size}, "
        f"LoRA {cfg.lora_group} rank {cfg.lora_rank}, surgery {cfg.surgery}, "
        f"{args.repeats} rounds x ({args.burn_in} untimed + {args.steps} timed) steps per variant"
    )
    log(f"  {LATENT_NOTE}: {tuple(latents.shape)}")

    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    rounds: dict[str, list[list[float]]] = {v: [] for v in VARIANTS}
    peaks: dict[str, float] = dict.fromkeys(VARIANTS, 0.0)
    for r in range(args.repeats):
        order = VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS))  # ABCD DCBA ABCD: drift hits all alike
        for name in order:
            _sync(device)
            _reset_peak(device)
            step_times = run_variant(name, bundle, latents, targets, anchors, cfg, total, rdc)[args.burn_in :]
            _sync(device)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_rss_mb()
            peaks[name] = max(peaks[name], peak)
            times[name] += step_times
            rounds[name].append(step_times)

    results = {v: _summary(times[v], rounds[v], peaks[v]) for v in VARIANTS}
    plain = results["plain"]["median_s"]
    ratio = results["doco-full"]["median_s"] / plain
    ratio_warmup = results["doco-warmup"]["median_s"] / plain
    ratio_2b = results["doco-full"]["median_s"] / results["plain-2b"]["median_s"]
    floor_2b = 1 + results["frozen-b"]["median_s"] / results["plain-2b"]["median_s"]
    per_round = [statistics.median(f) / statistics.median(p) for f, p in zip(rounds["doco-full"], rounds["plain"])]
    ratio_rdc = results["rdc-full"]["median_s"] / results["doco-full"]["median_s"]

    mem = "peak GPU MiB" if device.type == "cuda" else "peak RSS MiB"
    log("")
    log(f"  {'variant':<26}{'median s/step':>14}{'min':>9}{'max':>9}{mem:>14}{'x plain':>9}")
    for v in VARIANTS:
        s = results[v]
        log(
            f"  {LABELS[v]:<26}{s['median_s']:>14.4f}{s['min_s']:>9.4f}{s['max_s']:>9.4f}"
            f"{s['peak_rss_mb']:>14.0f}{s['median_s'] / plain:>9.2f}"
        )
    verdict = "meets" if ratio_2b <= TARGET_RATIO else "MISSES"
    log("")
    log(
        f"ratio doco_step / plain_step_on_2B_rows = {ratio_2b:.2f}x ({verdict} the <= {TARGET_RATIO}x aim; a full "
        f"DoCo step trains on B target + B prior rows and also runs the frozen model on B rows); its floor, "
        f"(plain 2B + frozen B) / plain 2B = {floor_2b:.2f}x"
    )
    log(
        f"doco_step / plain_step (B rows) = {ratio:.2f}x (per round {', '.join(f'{x:.2f}' for x in per_round)}); "
        f"warm-up step / plain step = {ratio_warmup:.2f}x"
    )
    log(f"rdc_step / doco_step = {ratio_rdc:.2f}x ({'meets' if ratio_rdc <= TARGET_RDC_RATIO else 'MISSES'} the "
        f"<= {TARGET_RDC_RATIO:g}x aim; attack_steps {rdc.attack_steps}, inversion every {rdc.invert_every} steps, "
        f"relearn weight {rdc.relearn_weight:g})")
    if kind != "model":
        log("NOTE: random weights: timings only; report the ones measured on the trained data/models/world.")

    full = _full_erase(bundle, latents, targets, anchors, params.erase.doco, device, log) if args.full_erase else None
    out = {
        "model": label,
        "weights": kind,
        "random_weights": kind != "model",
        "params": str(args.params),
        "preset": bundle.preset,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch_size": cfg.batch_size,
        "steps": args.steps,
        "burn_in": args.burn_in,
        "repeats": args.repeats,
        "lora_group": cfg.lora_group,
        "lora_rank": cfg.lora_rank,
        "surgery": cfg.surgery,
        "latents": LATENT_NOTE,
        "latent_shape": list(latents.shape),
        "results": results,
        "ratio": ratio,
        "ratio_per_round": per_round,
        "ratio_warmup": ratio_warmup,
        "ratio_vs_plain_2b": ratio_2b,
        "floor_vs_plain_2b": floor_2b,
        "target_ratio_vs_plain_2b": TARGET_RATIO,
        "meets_target": ratio_2b <= TARGET_RATIO,
        "ratio_rdc_vs_doco": ratio_rdc,
        "target_rdc_ratio": TARGET_RDC_RATIO,
        "full_erase": full,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs",
    }
    if args.json is not None:
        save_json(out, args.json)
        log(f"wrote {args.json}")
    return out


def _full_erase(bundle, latents, targets, anchors, cfg: DocoConfig, device: torch.device, log) -> dict[str, Any]:
    """Wall time of one whole train_doco call (setup included) with the params file's erase.doco settings."""
    _sync(device)
    _reset_peak(device)
    start = time.perf_counter()
    try:
        train_doco(bundle, targets, anchors, latents, cfg, progress=False)
    finally:
        remove_lora(bundle.unet)
    _sync(device)
    seconds = time.perf_counter() - start
    ok = seconds <= TARGET_ERASE_SECONDS
    log(
        f"full DoCo erase ({cfg.steps} steps, {cfg.warmup_steps} warm-up, batch {cfg.batch_size}): "
        f"{seconds:.1f} s ({'meets' if ok else 'MISSES'} the <= {TARGET_ERASE_SECONDS:.0f} s aim; "
        "anchor sampling and evaluation not included)"
    )
    return {
        "seconds": seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "target_seconds": TARGET_ERASE_SECONDS,
        "meets_target": ok,
        "config": dataclasses.asdict(cfg),
    }


if __name__ == "__main__":
    main()

"""Per-step cost of each erasure method on a Stable Diffusion v1.4-sized model, projected to one concept.

    python benchmarks/sd_speed.py [--size full|tiny] [--device cuda] [--dtype bf16|fp32] [--steps 5] \
        [--burn-in 1] [--methods doco,esd,ca,advunlearn-fast,advunlearn,anchors] [--batch-size B] \
        [--params params.yaml] [--json out.json]

`--size full` builds SD v1.4's architecture with RANDOM weights (the cost of a step does not depend on
them): UNet (320, 640, 1280, 1280), 2 layers per block, cross-attention 768, 64x64x4 latents; the VAE
(128, 256, 512, 512) for 512 px images; CLIP ViT-L/14's text encoder (768 wide, 12 layers, 12 heads, 77
tokens) with a byte-level tokenizer written on the spot (no download; every prompt is padded to 77 tokens,
so its cost is the real one). `--size tiny` is the tests' tiny SD (tests/conftest.py), for checking the
script on a CPU. `--dtype bf16` holds the UNet, VAE and text encoder in bfloat16, as the pipeline holds a
reduced-precision SD bundle; LoRA weights and AdvUnlearn's trained encoder copy stay float32 (the methods
make them so).

Every method runs through the project's own training function (train_doco, train_esd, train_ca,
train_advunlearn) on random N(0, 1) latents; per-step times come from its history clock (setup excluded),
`--burn-in` untimed steps first. DoCo and AdvUnlearn have two kinds of step (discriminator-only or
attack-free warm-up, then the full step); both are timed and the projection weighs them by the recipe's
counts (RECIPES). Peak memory: torch.cuda.max_memory_allocated, reset per method; on the CPU the
process's peak RSS so far. `anchors` times the project's sampler (params `sample` section, VAE decode
included) per 512 px image: DoCo's released recipe first draws 1000 anchor images.

Goals (one H100/H200, full size, bf16): DoCo <= 10 min per concept, AdvUnlearn fast AT <= 1 h; full
AdvUnlearn's cost is projected from its per-iteration time. These are THIS implementation's costs (x_t is a
noised base-model sample, not the released per-step partial DDIM), not the released code's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from cdc.bundle import ModelBundle
from cdc.codec import VaeCodec
from cdc.io import save_json
from cdc.lora import remove_lora
from cdc.methods.advunlearn import AdvUnlearnConfig, train_advunlearn
from cdc.methods.ca import train_ca
from cdc.methods.doco import train_doco
from cdc.methods.esd import train_esd
from cdc.sampler import sample
from cdc.stages.schema import load_params
from cdc.system import hardware, peak_memory_mb
from cdc.text import ClipEncoder

METHODS = ("doco", "esd", "ca", "advunlearn-fast", "advunlearn", "anchors")
# (warm-up steps, full steps) of the released recipes, the step counts the projection uses:
RECIPES = {
    "doco": (1000, 1000),  # DoCo README: 2000 steps, the first 1000 D-only, batch 8+8, 512 px
    # [Wu et al., AAAI 2025; yongliang-wu/DoCo@ebf6ff4:README.md, --max_train_steps 2000 --warm_up 1000]
    "esd": (0, 1000),  # ESD train-esd.py --iterations 1000 [Gandikota et al., ICCV 2023]; the 2025 rewrite uses 200
    "ca": (0, 400),  # Concept Ablation: 400 steps for nudity/memorization, 100 for styles/objects
    # [Kumari et al., ICCV 2023; its README, nupurkmr9/concept-ablation]
    "advunlearn-fast": (200, 800),  # AdvUnlearn: 1000 iterations, --warmup_iter 200
    # [Zhang et al., NeurIPS 2024; OPTML-Group/AdvUnlearn@9d23124:train-scripts/AdvUnlearn.py argument defaults]
    "advunlearn": (200, 800),  # the same, every post-warm-up iteration a 30-step attack
    "anchors": (0, 1000),  # DoCo: 1000 SD-generated anchor images per concept
    # [yongliang-wu/DoCo@ebf6ff4:train.py, --num_class_images default 1000]
}
GOAL_MINUTES = {"doco": 10.0, "advunlearn-fast": 60.0}
TEMPLATES = ("{}", "a photo of {}", "a painting of {}", "{} in a field")
TARGET, ANCHOR = "a church", "a house"
RETAIN = ("a red car", "a tree", "a dog", "a chair", "a bicycle")
ARCH = {  # SD v1.4 (CompVis/stable-diffusion-v1-4 configs) and the tests' tiny SD
    "full": dict(unet=dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                           down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                           up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                           cross_attention_dim=768, attention_head_dim=8),
                 vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
                          down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
                 text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           vocab_size=49408)),
    "tiny": dict(unet=dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                           down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                           up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                           attention_head_dim=8),
                 vae=dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=32,
                          down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2),
                 text=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)),
}


# ----------------------------------------------------------------------------------------- model
def write_clip_vocab(folder: Path) -> None:
    """A working byte-level CLIP tokenizer (vocab.json of bytes, bytes + '</w>', two specials; no merges),
    as tests/conftest.py writes it."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(c) for c in keep] + [chr(256 + i) for i in range(256 - len(keep))]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def build_bundle(size: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> ModelBundle:
    """SD v1.x UNet, VAE and CLIP text encoder of `size` with random weights, SD's DDPM scheduler."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.utils import logging as dlogging
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    arch = ARCH[size]
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        write_clip_vocab(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77, local_files_only=True)
    text_cfg = {"vocab_size": len(tokenizer), **arch["text"]}
    text = CLIPTextModel(CLIPTextConfig(**text_cfg, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **arch["unet"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **arch["vae"])
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              steps_offset=1)
    quiet = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # diffusers warns on any .to(dtype) of a model it did not load
    try:
        for module in (text, unet, vae):
            module.to(device=device, dtype=dtype).eval()
    finally:
        dlogging.set_verbosity(quiet)
    return ModelBundle(text=ClipEncoder(tokenizer, text), unet=unet, scheduler=scheduler, codec=VaeCodec(vae),
                       preset="sd")


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------- methods
def advunlearn_config(args: argparse.Namespace, fast: bool, steps: int, warmup: int) -> AdvUnlearnConfig:
    """AdvUnlearn's config from the command line (released values by default; not in params.yaml yet);
    max_grad_norm 1e9: released AdvUnlearn does not clip (the config needs a finite bound)."""
    return AdvUnlearnConfig(
        steps=steps, warmup_steps=warmup, lr=args.adv_lr, batch_size=args.batch_size or args.adv_batch_size,
        lora_group="xattn-kv", lora_rank=4, lora_alpha=None, max_grad_norm=1e9, weight_decay=0.0, seed=0,
        log_every=1, negative_guidance=1.0, retain_weight=args.retain_weight, retain_batch=args.retain_batch,
        attack_steps=args.fast_attack_steps if fast else args.attack_steps, attack_k=1, attack_lr=args.attack_lr,
        attack_method="fast_at" if fast else "pgd", module="text_encoder", text_layers=None)


def step_seconds(history: list[dict]) -> list[float]:
    """Per-step seconds from a history clock with one row per step."""
    clock = [row["seconds"] for row in history]
    return [b - a for a, b in zip([0.0, *clock[:-1]], clock)]


def run_method(name: str, bundle: ModelBundle, args: argparse.Namespace, params) -> dict[str, Any]:
    """Time `name`: {"warmup_s": [...], "step_s": [...], "batch_size": B, "config": {...}} (warm-up list empty
    for methods without one). Two-phase methods run burn+n warm-up steps, then burn+n full steps."""
    b, n = args.burn_in, args.steps
    cfg_b = args.batch_size
    latents = torch.randn((max(cfg_b or 8, 8), 4, *(2 * [bundle.unet.config.sample_size])),
                          generator=torch.Generator().manual_seed(0))
    targets = [TEMPLATES[i % len(TEMPLATES)].format(TARGET) for i in range(latents.shape[0])]
    anchors = [TEMPLATES[i % len(TEMPLATES)].format(ANCHOR) for i in range(latents.shape[0])]
    if name == "anchors":
        sampler = dataclasses.replace(params.sample, batch_size=cfg_b or args.sample_batch,
                                      precision="bf16" if args.dtype == "bf16" else "fp32")
        prompts, times = anchors[:1] * sampler.batch_size, []
        for _ in range(b + n):
            start = time.perf_counter()
            sample(bundle, prompts, list(range(len(prompts))), sampler, progress=False)  # uint8 images: synced
            times.append((time.perf_counter() - start) / sampler.batch_size)  # seconds per image
        return {"warmup_s": [], "step_s": times[b:], "batch_size": sampler.batch_size,
                "config": dataclasses.asdict(sampler)}
    if name.startswith("advunlearn"):
        cfg = advunlearn_config(args, name == "advunlearn-fast", 2 * (b + n), b + n)
        retain_latents = latents[: len(RETAIN)]
        _, history = train_advunlearn(bundle, targets, latents, list(RETAIN), retain_latents, cfg, progress=False)
    else:
        section = getattr(params.erase, name)
        cfg = dataclasses.replace(section, batch_size=cfg_b or section.batch_size, log_every=1)
        try:
            if name == "doco":
                cfg = dataclasses.replace(cfg, steps=2 * (b + n), warmup_steps=b + n)
                _, history = train_doco(bundle, targets, anchors, latents, cfg, progress=False)
            elif name == "esd":
                _, history = train_esd(bundle, targets, latents, dataclasses.replace(cfg, steps=b + n), progress=False)
            else:
                _, history = train_ca(bundle, targets, anchors, latents, dataclasses.replace(cfg, steps=b + n),
                                      progress=False)
        finally:
            remove_lora(bundle.unet)
    sec = step_seconds(history)
    two_phase = name == "doco" or name.startswith("advunlearn")
    warm, full = (sec[b : b + n], sec[2 * b + n :]) if two_phase else ([], sec[b:])
    return {"warmup_s": warm, "step_s": full, "batch_size": cfg.batch_size, "config": dataclasses.asdict(cfg)}


# ----------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", choices=tuple(ARCH), default="full", help="full: SD v1.4 architecture; tiny: tests'")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="UNet, VAE and text encoder weights")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per phase (default 5)")
    ap.add_argument("--burn-in", type=int, default=1, help="untimed steps before each phase (default 1)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="erase.doco/esd/ca and sample sections")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="batch of every method (default: params file's; AdvUnlearn --adv-batch-size; anchors "
                         "--sample-batch)")
    ap.add_argument("--sample-batch", type=int, default=8, help="anchors: images per sampler batch (default 8)")
    adv = ap.add_argument_group("AdvUnlearn (not in params.yaml yet: released values, OPTML-Group/AdvUnlearn@9d23124)")
    adv.add_argument("--adv-batch-size", type=int, default=1, help="prompts x samples per iteration (1)")
    adv.add_argument("--adv-lr", type=float, default=1e-5, help="Adam lr on the text encoder (1e-5)")
    adv.add_argument("--attack-steps", type=int, default=30, help="inner PGD steps of full AT (30)")
    adv.add_argument("--fast-attack-steps", type=int, default=1,
                     help="inner steps of fast AT (1: the FGSM-like fast AT; the README's fast_at run uses 30,\n"
                          "which costs what full AT costs)")
    adv.add_argument("--attack-lr", type=float, default=1e-3, help="Adam lr on the prefix embedding (1e-3)")
    adv.add_argument("--retain-batch", type=int, default=5, help="retain prompts per iteration (5)")
    adv.add_argument("--retain-weight", type=float, default=0.3, help="gamma of the retain term (README 0.3)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    args = ap.parse_args(argv)
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.method_list) - set(METHODS))
    if unknown or not args.method_list:
        ap.error(f"--methods: unknown {unknown} (known: {', '.join(METHODS)})")
    for name in ("steps", "batch_size", "sample_batch", "adv_batch_size", "fast_attack_steps", "retain_batch"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.burn_in < 0 or args.attack_steps < 0:
        ap.error("--burn-in and --attack-steps must be >= 0")
    return args


def summarise(name: str, run: dict[str, Any], full_size: bool) -> dict[str, Any]:
    """Medians, the projection at the recipe's step counts and, at full size, the goal verdict."""
    n_warm, n_full = RECIPES[name]
    warm = statistics.median(run["warmup_s"]) if run["warmup_s"] else 0.0
    step = statistics.median(run["step_s"])
    minutes = (n_warm * warm + n_full * step) / 60.0
    goal = GOAL_MINUTES.get(name)
    return {**run, "median_warmup_s": warm, "median_step_s": step, "recipe_warmup_steps": n_warm,
            "recipe_steps": n_full, "projected_minutes": minutes, "goal_minutes": goal,
            "meets_goal": None if goal is None or not full_size else minutes <= goal}


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
    device, dtype = torch.device(args.device), torch.bfloat16 if args.dtype == "bf16" else torch.float32
    params = load_params(args.params)
    bundle = build_bundle(args.size, device, dtype)
    sizes = {"unet": n_params(bundle.unet), "vae": n_params(bundle.codec.vae), "text": n_params(bundle.text.model)}
    cuda = device.type == "cuda"
    log(f"sd_speed: RANDOM-WEIGHT SD v1.x, size {args.size} (UNet {sizes['unet'] / 1e6:.1f} M, VAE "
        f"{sizes['vae'] / 1e6:.1f} M, text {sizes['text'] / 1e6:.2f} M params), {args.dtype}, {device}")
    log(f"  {hardware()}; {args.burn_in} untimed + {args.steps} timed steps per phase")
    results: dict[str, dict[str, Any]] = {}
    for name in args.method_list:
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        run = run_method(name, bundle, args, params)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_memory_mb()
        results[name] = summarise(name, {**run, "peak_mb": peak}, args.size == "full")

    mem = "peak GPU MiB" if cuda else "peak RSS MiB"
    log("")
    log(f"  {'method':<16}{'batch':>6}{'warm-up s':>11}{'s/step':>10}{mem:>14}{'recipe steps':>14}"
        f"{'min/concept':>13}  goal")
    for name, r in results.items():
        goal = "" if r["goal_minutes"] is None else f"<= {r['goal_minutes']:.0f} min: " + (
            "n/a (tiny)" if r["meets_goal"] is None else "meets" if r["meets_goal"] else "MISSES")
        recipe = f"{r['recipe_warmup_steps']}+{r['recipe_steps']}" if r["recipe_warmup_steps"] else r["recipe_steps"]
        warm = f"{r['median_warmup_s']:.4f}" if r["warmup_s"] else "-"
        log(f"  {name:<16}{r['batch_size']:>6}{warm:>11}{r['median_step_s']:>10.4f}"
            f"{r['peak_mb']:>14.0f}{recipe:>14}{r['projected_minutes']:>13.2f}  {goal}")
    log("  (anchors: seconds per image, recipe = images; DoCo and AdvUnlearn: warm-up + full steps)")
    if "advunlearn" in results:
        r = results["advunlearn"]
        log(f"full AdvUnlearn: {r['median_step_s']:.2f} s per adversarial iteration "
            f"({r['config']['attack_steps']} attack steps) -> {r['projected_minutes'] / 60:.2f} h per concept")
    if "doco" in results and "anchors" in results:
        total = results["doco"]["projected_minutes"] + results["anchors"]["projected_minutes"]
        log(f"DoCo with its 1000 anchor images: {total:.1f} min per concept")
    if args.size != "full" or not cuda:
        log("NOTE: not SD v1.4 size on a GPU: the numbers check the script, they do not answer the goals.")
    out = {"size": args.size, "device": str(device), "dtype": args.dtype, "random_weights": True,
           "params_count": sizes, "steps": args.steps, "burn_in": args.burn_in, "params": str(args.params),
           "hardware": hardware(), "memory": "torch.cuda.max_memory_allocated per method" if cuda else
           "process peak RSS so far (CPU)", "results": results, "torch": torch.__version__,
           "python": platform.python_version()}
    if args.json is not None:
        save_json(out, args.json)
        log(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()

"""`cdc erase`: erase a concept given as text from a base model into a diffusers LoRA folder, without DVC.

In the habit of diffusers' training scripts: one command, every knob a flag, defaults from a params file
(params.yaml for the world, params_sd.yaml for Stable Diffusion v1.4 at the papers' settings). The anchor
(and, for ESD, target) images are sampled from the user's own base model, from prompt templates the
project ships (data/prompts/templates.yaml) or the user's prompt file; nothing is fetched at run time.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PARAMS = {"world": REPO / "params.yaml", "sd": REPO / "params_sd.yaml"}
DEFAULT_MODEL = {"world": str(REPO / "data" / "models" / "world"), "sd": "CompVis/stable-diffusion-v1-4"}
DTYPES = ("auto", "fp32", "bf16", "fp16")
GRID_PROMPTS, GRID_SAMPLES = 4, 4  # the samples grid: the first 4 images of the first 4 prompts


def _choice(flag: str, value: str, options: tuple[str, ...]) -> str:
    """`value` if it is one of `options`, else a one-line ValueError naming the flag."""
    if value not in options:
        raise ValueError(f"{flag} must be one of {', '.join(options)}, got {value!r}")
    return value


def resolve_concept(args: argparse.Namespace, templates: Any) -> Any:
    """--concept/--anchor/--kind (a `cdc.cli.concept.KnownConcept`), filled from the shipped concept table where the
    user left them out."""
    from cdc.cli.concept import KnownConcept, known_concept

    known = known_concept(templates, args.concept)
    if known is not None:
        # A shipped concept keeps its released per-method overrides only with its released anchor.
        same_anchor = args.anchor is None or args.anchor.strip().lower() == known.anchor.lower()
        return KnownConcept(known.concept, args.anchor or known.anchor, args.kind or known.kind,
                       known.overrides if same_anchor else {})
    if args.anchor is None:
        shipped = ", ".join(templates.concepts) or "none"
        raise ValueError(f"--anchor is required for {args.concept!r} (concepts with a shipped anchor: {shipped})")
    return KnownConcept(args.concept, args.anchor, args.kind or "object")


def build_pairs(args: argparse.Namespace, templates: Any, c: Any) -> Any:
    """Paired target/anchor prompts: the user's prompt file, else the kind's templates; at most --max-prompts."""
    from cdc.anchors import Pairs
    from cdc.cli.common import read_prompts
    from cdc.cli.concept import concept_pairs, prompt_file_pairs

    if args.prompts_file:
        pairs = prompt_file_pairs(c.concept, c.anchor, read_prompts(None, args.prompts_file))
    else:
        pairs = concept_pairs(c.concept, c.anchor, templates, c.kind)
    if args.max_prompts is not None:
        if args.max_prompts < 1:
            raise ValueError(f"--max-prompts must be >= 1, got {args.max_prompts}")
        pairs = Pairs(pairs.family, pairs.target_prompts[: args.max_prompts], pairs.anchor_prompts[: args.max_prompts])
    return pairs


def method_config(params: Any, method: str, c: Any, args: argparse.Namespace) -> Any:
    """erase.<method> of the params file, then the concept's released overrides, --set, and the flags."""
    from cdc.stages.params import with_overrides

    cfg = params.erase.config(method)
    where = f"erase.{method}"
    for text in (c.overrides.get(method, ""), " ".join(args.set)):
        if text.strip():
            cfg = with_overrides(cfg, text, where)
    flags = {"steps": args.steps, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed}
    if args.warmup_steps is not None:
        if not has_warmup(cfg):
            with_warmup = [m for m, c in params.erase.configs.items() if has_warmup(c)]
            raise ValueError(f"--warmup-steps is a knob of {', '.join(with_warmup)}; {method} has no warm-up")
        flags["warmup_steps"] = args.warmup_steps
    try:
        return dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    except ValueError as e:  # range checks, e.g. DoCo's or AdvUnlearn's warm-up >= steps
        hint = " (pass a smaller --warmup-steps or a larger --steps)" if "warmup_steps" in str(e) else ""
        raise ValueError(f"{where}: {e}{hint}") from None


def has_warmup(cfg: Any) -> bool:
    """Whether a method's config has a warm-up (DoCo: discriminator-only steps; AdvUnlearn: steps without attack)."""
    return dataclasses.is_dataclass(cfg) and "warmup_steps" in {f.name for f in dataclasses.fields(cfg)}


EXTRA_OUTPUT_BYTES = 32 * 2**20  # samples_grid.png (16 images), history.csv, pairs.json, configs and a tokenizer


def output_bytes(bundle: Any, cfg: Any) -> tuple[int, str]:
    """What `cdc erase` will write, estimated before training: AdvUnlearn's text encoder is a full copy of the
    base encoder's weights (in the bundle's dtype); a LoRA is rank x (in + out) float32 numbers per wrapped layer
    (x kernel size for convolutions). Plus EXTRA_OUTPUT_BYTES for the rest of the folder."""
    from torch import nn

    from cdc.lora import target_modules

    if getattr(cfg, "module", "unet") == "text_encoder":
        weights = sum(p.numel() * p.element_size() for p in bundle.text.model.parameters())
        what = "a copy of the base text encoder's weights"
    else:
        numbers = 0
        for name in target_modules(bundle.unet, cfg.lora_group):
            layer = bundle.unet.get_submodule(name)
            layer = getattr(layer, "base_layer", layer)
            if isinstance(layer, nn.Conv2d):
                kh, kw = layer.kernel_size
                numbers += cfg.lora_rank * (layer.in_channels * kh * kw + layer.out_channels)
            else:
                numbers += cfg.lora_rank * (layer.in_features + layer.out_features)
        weights = 4 * numbers
        what = f"a rank-{cfg.lora_rank} LoRA"
    return weights + EXTRA_OUTPUT_BYTES, f"{what}, {weights / 2**20:.1f} MiB, and 32 MiB for the grid and logs"


def resolve_dtype(name: str, device: Any) -> Any:
    """The UNet/VAE/text-encoder dtype: 'auto' is bf16 on CUDA (as diffusers' scripts' mixed precision), else fp32."""
    import torch

    if name == "auto":
        name = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def draw_samples(bundle: Any, prompts: list[str], n: int, first_seed: int, cfg: Any,
                 progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """n base-model images per prompt (seeds first_seed..first_seed+n-1): uint8 (P*n, H, W, 3), prompt ids (P*n,)."""
    from cdc.sampler import sample

    index = np.repeat(np.arange(len(prompts)), n)
    seeds = [first_seed + j for _ in prompts for j in range(n)]
    images = sample(bundle, [prompts[i] for i in index], seeds, cfg, progress=progress)
    return images, index


def samples_grid(images: np.ndarray, index: np.ndarray, prompts: list[str]) -> np.ndarray:
    """A labelled grid of the first samples of the first prompts, one row per prompt."""
    from cdc.grid import make_grid

    pick = [k for p in range(min(GRID_PROMPTS, len(prompts))) for k in np.flatnonzero(index == p)[:GRID_SAMPLES]]
    ncols = min(GRID_SAMPLES, int(np.sum(index == 0)))
    scale = 1 if images.shape[1] >= 128 else 2  # SD images are big enough as they are
    return make_grid(images[pick], ncols=ncols, labels=[prompts[index[k]] for k in pick], scale=scale)


def history_csv(history: list[dict]) -> str:
    """The training history rows as CSV (columns: every key, in first-seen order)."""
    columns = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def _quiet_libraries() -> None:
    """Switch off diffusers' and transformers' own loading bars (process-wide, as --quiet asks)."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def cmd_erase(args: argparse.Namespace) -> int:
    """Sample the base model's anchor (ESD: target) images, train the method's LoRA, save it with its config."""
    from cdc.attention import attention_kernel, resolve_attention
    from cdc.bundle import PRESETS, load_bundle
    from cdc.cli.common import check_free_space, check_out_dir
    from cdc.cli.concept import TEMPLATES_PATH, read_templates, retain_prompts
    from cdc.cli.settings import load_command_params
    from cdc.erased import save_erased
    from cdc.io import atomic_path, save_image, save_json, save_text
    from cdc.lora_io import WEIGHT_NAME
    from cdc.methods import known_methods, method_module
    from cdc.stages.erase import run_method

    # Every cheap check first, so a typo never costs a model load or a sampling run.
    preset = _choice("--preset", args.preset, PRESETS)
    method = _choice("--method", args.method, tuple(known_methods()))
    needs = method_module(method).NEEDS  # the samples it learns from: "target", "anchor", "retain"
    dtype_name = _choice("--dtype", args.dtype, DTYPES)
    attention = resolve_attention(args.attention, args.device)  # names the allowed kernels
    out = Path(args.out)
    check_out_dir(out, args.overwrite)
    templates_path = Path(args.templates) if args.templates else TEMPLATES_PATH
    templates = read_templates(templates_path)
    concept = resolve_concept(args, templates)
    pairs = build_pairs(args, templates, concept)
    retain = retain_prompts(templates, concept.concept, concept.anchor) if "retain" in needs else []
    params_path = Path(args.params) if args.params else DEFAULT_PARAMS[preset]
    params = load_command_params(params_path)
    cfg = method_config(params, method, concept, args)
    n = params.anchors.samples_per_prompt if args.samples_per_prompt is None else args.samples_per_prompt
    if n < 1:
        raise ValueError(f"--samples-per-prompt must be >= 1, got {n}")
    first_seed = params.anchors.seed if args.seed is None else args.seed
    model = args.model or DEFAULT_MODEL[preset]
    dtype = resolve_dtype(dtype_name, args.device)
    say = (lambda *_: None) if args.quiet else print
    if args.quiet:
        _quiet_libraries()

    # Under `accelerate launch` every process trains on its share of each batch; the first samples and saves.
    accelerator, shard, device = processes(args.device)
    main = accelerator is None or accelerator.is_main_process
    if not main:
        say = lambda *_: None  # noqa: E731
    bundle = load_bundle(preset, model, device=device, dtype=dtype)
    check_free_space(out, *output_bytes(bundle, cfg))  # a full disk says so now, not after training
    # Each method learns from the base model's own images of the sides it needs (ESD, AdvUnlearn: the concept's;
    # DoCo, CA: the anchor's), and a method with a retain regulariser from images of other concepts.
    sides = [s for s in ("anchor", "target") if s in needs]
    side_prompts = {"anchor": pairs.anchor_prompts, "target": pairs.target_prompts}
    drawn: list = [None, None]  # ({"<side>_images": ..., "<side>_index": ...}, retain images)
    if main:
        drawn[0] = {}
        for side in sides:
            say(f"sampling {n} {side} image(s) for each of {len(side_prompts[side])} prompts with the base model")
            images, index = draw_samples(bundle, side_prompts[side], n, first_seed, params.sample,
                                         progress=not args.quiet)
            drawn[0] |= {f"{side}_images": images, f"{side}_index": index}
        if retain:  # the utility-retaining regulariser's images, also the user's base model's
            say(f"sampling 1 image for each of {len(retain)} retain prompts with the base model")
            drawn[1] = draw_samples(bundle, retain, 1, first_seed, params.sample, progress=not args.quiet)[0]
    if accelerator is not None:  # every process trains on the first one's images
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(drawn, from_process=0)
    samples, retain_images = drawn
    retain_set = (retain, retain_images) if retain else None
    say(f"training {method} on {concept.concept!r} -> {concept.anchor!r}: {cfg.steps} steps"
        + (f" on {shard.world} processes" if shard.world > 1 else ""))
    start = time.perf_counter()
    with attention_kernel(bundle.unet, attention):
        erased, history = run_method(bundle, method, pairs, samples, cfg, retain=retain_set,
                                     progress=main and not args.quiet, shard=shard)
    seconds = time.perf_counter() - start
    if not main:
        return 0
    config = {
        "method": method, "concept": concept.concept, "anchor": concept.anchor, "kind": concept.kind,
        "params": dataclasses.asdict(cfg), "base_model": str(model), "preset": preset,
        "params_file": str(params_path), "prompts": str(args.prompts_file or templates_path),
        "n_pairs": len(pairs.target_prompts), "samples_per_prompt": n, "sample_seed": first_seed,
        "sample": dataclasses.asdict(params.sample), "dtype": str(dtype).removeprefix("torch."),
        "attention": attention, "command": "cdc erase", "processes": shard.world,
    }
    with atomic_path(out, replace=args.overwrite) as tmp:
        save_erased(erased, bundle, tmp, config)
        save_json({"target_prompts": pairs.target_prompts, "anchor_prompts": pairs.anchor_prompts,
                   "sampled": sides, "retain_prompts": retain}, tmp / "pairs.json")
        save_text(history_csv(history), tmp / "history.csv")
        first = sides[0]
        save_image(samples_grid(samples[f"{first}_images"], samples[f"{first}_index"], side_prompts[first]),
                   tmp / "samples_grid.png")
    if erased.text is not bundle.text:
        say(f"{method} erase took {seconds:.0f} s; wrote the text encoder to {out} (load with "
            f"{type(bundle.text.model).__name__}.from_pretrained({str(out)!r}) or `cdc generate --lora {out}`)")
    else:
        say(f"{method} erase took {seconds:.0f} s; wrote {out / WEIGHT_NAME} (load with "
            f"StableDiffusionPipeline.load_lora_weights({str(out)!r}) or `cdc generate --lora {out}`)")
    return 0


def processes(device: str | None) -> tuple[Any, Any, Any]:
    """(accelerator, shard, device): an `accelerate` Accelerator and this process's shard where the command runs
    under `accelerate launch` with several processes (WORLD_SIZE > 1), else (None, the single shard, `device`)."""
    import os

    from cdc.methods.parallel import SINGLE, accelerate_shard

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, SINGLE, device
    import torch
    from accelerate import Accelerator

    on_cpu = torch.device(device).type == "cpu" if device is not None else not torch.cuda.is_available()
    accelerator = Accelerator(cpu=on_cpu)  # without cpu=True, accelerate finds no GPU and runs one process
    return accelerator, accelerate_shard(accelerator), accelerator.device


def add_model_flags(p: Any) -> None:
    """--preset and --model, as every command that loads a base model takes them."""
    p.add_argument("--preset", default="world", help="model preset: world | sd (default world)")
    p.add_argument("--model", default=None,
                   help="base model: a world folder, or an SD 1.x diffusers folder or hub id "
                        "(default: data/models/world | CompVis/stable-diffusion-v1-4)")


def add_erase_parser(sub: Any) -> None:
    """Add `cdc erase` to the `cdc` subparsers."""
    e = sub.add_parser(
        "erase", help="erase a concept from a model into a diffusers LoRA folder or text encoder (no DVC needed)",
        description="Erase a concept given as text: sample anchor images (ESD, AdvUnlearn: target images) from the "
                    "base model, train the method, and save its LoRA where StableDiffusionPipeline.load_lora_weights "
                    "finds it (AdvUnlearn: a text encoder folder that CLIPTextModel.from_pretrained loads). Defaults "
                    "come from --params; flags override them.",
    )
    add_model_flags(e)
    e.add_argument("--concept", required=True,
                   help="the concept to erase, as text (\"church\", \"van gogh\"); a concept of the shipped table "
                        "(templates.yaml `concepts`: church, garbage-truck, parachute, tench, van-gogh, nudity) "
                        "also brings its anchor, kind and released per-method overrides")
    e.add_argument("--anchor", default=None,
                   help="what the concept should become (\"house\"; for a style the medium, e.g. \"painting\"); "
                        "required unless the concept is in the shipped table")
    e.add_argument("--kind", default=None,
                   help="template set of --templates: object (default) | style | person (attributes of people)")
    e.add_argument("--prompts-file", default=None,
                   help="your target prompts instead of the templates, one per line (# comments), each naming the "
                        "concept; its anchor prompt is the line with the concept replaced by the anchor")
    e.add_argument("--templates", default=None,
                   help="prompt templates YAML (default: the shipped data/prompts/templates.yaml)")
    e.add_argument("--max-prompts", type=int, default=None, help="use only the first N prompt pairs (default: all)")
    e.add_argument("--method", default="doco",
                   help="a module of cdc.methods: doco | esd | ca | advunlearn | advunlearn_fast | rdc (AdvUnlearn "
                        "trains the text encoder; default doco)")
    e.add_argument("--params", default=None,
                   help="params file: its erase.<method>, sample and anchors sections give the defaults "
                        "(default: params.yaml for --preset world, params_sd.yaml, the papers' SD v1.4 "
                        "settings, for --preset sd)")
    e.add_argument("--samples-per-prompt", type=int, default=None,
                   help="base-model images per anchor (ESD: target) prompt (default: anchors.samples_per_prompt)")
    e.add_argument("--steps", type=int, default=None, help="training steps, DoCo's and AdvUnlearn's warm-up "
                                                            "included (default: erase.<method>.steps)")
    e.add_argument("--warmup-steps", type=int, default=None,
                   help="DoCo and AdvUnlearn: the first steps, discriminator-only (DoCo) or without the attack "
                        "(AdvUnlearn); fewer than --steps (default: erase.<method>.warmup_steps)")
    e.add_argument("--lr", type=float, default=None, help="LoRA AdamW learning rate (default: erase.<method>.lr)")
    e.add_argument("--batch-size", type=int, default=None,
                   help="latents per training step (default: erase.<method>.batch_size)")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other knob of erase.<method>, e.g. --set lora_rank=8 --set 'd_lr=5e-4 lam=0.5' "
                        "(repeatable; YAML values)")
    e.add_argument("--seed", type=int, default=None,
                   help="seed of the LoRA init and training draws, and first seed of the samples "
                        "(default: erase.<method>.seed and anchors.seed)")
    e.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    e.add_argument("--dtype", default="auto",
                   help="weights of the base model: auto (bf16 on CUDA, fp32 on the CPU) | fp32 | bf16 | fp16; "
                        "the LoRA itself trains in fp32")
    e.add_argument("--attention", default="auto",
                   help="attention kernel in training: auto (fused SDPA on GPU, unfused on the CPU) | sdpa | unfused")
    e.add_argument("--out", required=True, help="output folder, LoRA or text encoder (must be new or empty)")
    e.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    e.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    e.set_defaults(func=cmd_erase)
